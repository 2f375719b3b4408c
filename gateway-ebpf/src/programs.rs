//! The programs; see main.rs for what each one does.

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        __sk_buff, BPF_EXIST, BPF_F_MMAPABLE, BPF_F_NO_PREALLOC, BPF_NOEXIST,
        BPF_SK_STORAGE_GET_F_CREATE, BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG,
        BPF_SOCK_OPS_TCP_CONNECT_CB, BPF_TCP_CLOSE, BPF_TCP_SYN_SENT, bpf_map_def, bpf_map_type,
        bpf_sock, bpf_sock_addr,
    },
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_uid_gid, bpf_get_local_storage, bpf_get_netns_cookie,
        bpf_get_socket_cookie, bpf_ktime_get_boot_ns, bpf_sk_fullsock, bpf_sk_storage_delete,
        bpf_sk_storage_get,
    },
    macros::{
        btf_map, cgroup_skb, cgroup_sock, cgroup_sock_addr, lsm_cgroup, map, sock_ops, tracepoint,
    },
    maps::{Array, HashMap, LpmTrie, LruHashMap, RingBuf, lpm_trie::Key},
    programs::{
        LsmContext, SkBuffContext, SockAddrContext, SockContext, SockOpsContext, TracePointContext,
    },
};
use aya_log_ebpf::debug;
use core::{
    cell::UnsafeCell,
    ffi::c_void,
    intrinsics::{AtomicOrdering, atomic_xadd},
    marker::PhantomData,
    ptr::{addr_of, addr_of_mut, read_volatile, write_volatile},
};
use gateway_common::{
    ACTION_BLOCK, ACTION_DIRECT, ACTION_REDIRECT, AF_INET, AF_INET6, ClientKey, Config, ConnInfo,
    DESTINATION_PORT_BITS, Destination, DestinationKeyData, EVENT_BIND, EVENT_CONNECT, EVENT_KINDS,
    EVENT_LIMIT, EVENT_LISTENER, EVENT_NETNS, EVENT_SOCKET, EVENT_UDP, Event, FLAG_DEBUG_LOG,
    JobLink, JobState, LIMIT_NO_RECORD, LIMIT_PENDING, LIMIT_TOTAL, MAX_JOB_SLOTS, MAX_PENDING,
    MODE_ENFORCE, PENDING_SLACK, SocketRecord, destination_key, v4_mapped,
};

const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;
const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;
const DNS_PORT: u16 = 53;

/// Return values of cgroup sock/sock_addr programs.
const ALLOW: i32 = 1;
const REFUSE: i32 = 0;

/// Processes whose execs are noted (`EXEC_STARTS`).
const MAX_EXEC_STARTS: u32 = 65536;

#[map]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// (port, address prefix) → action. Filled by the daemon from `[[targets]]` and `allow_direct`.
#[map]
static DESTINATIONS: LpmTrie<DestinationKeyData, Destination> = LpmTrie::with_max_entries(16384, 0);

/// Resolver addresses (IPv4 as IPv4-mapped) that may receive UDP on port 53.
#[map]
static DNS_RESOLVERS: HashMap<[u8; 16], u8> = HashMap::with_max_entries(64, 0);

/// Redirected connects by client (address, port), from `sock_ops` until the daemon takes them
/// or the socket closes. A plain hash: nothing in it is ever evicted; the connect programs keep
/// it from filling (`JobState` pending counters).
#[map]
static BY_CLIENT: HashMap<ClientKey, ConnInfo> =
    HashMap::with_max_entries(MAX_PENDING + PENDING_SLACK, 0);

/// tgid → when it last began an exec (CLOCK_BOOTTIME, like `ConnInfo::boot_ns`; 0: none since it
/// first connected). A redirected connect adds its process; `gw_exec_start` updates only
/// processes already here, so the table holds processes that connect through the gateway, not
/// every exec of the machine. No entry (never added, or evicted) tells the daemon nothing, and it
/// then vouches for nothing.
#[map]
static EXEC_STARTS: LruHashMap<u32, u64> = LruHashMap::with_max_entries(MAX_EXEC_STARTS, 0);

/// Counters of each job by slot; the daemon mmaps the array (its `taken` adds and its reads).
#[map]
static JOB_STATES: Array<JobState> = Array::with_max_entries(MAX_JOB_SLOTS, BPF_F_MMAPABLE);

/// Which job the cgroup a program is attached to is (written by the daemon).
#[map]
static JOB_LINKS: SharedCgroupStorage<JobLink> = SharedCgroupStorage::new();

/// The record of each redirected socket (socket storage: freed with the socket, charged to it).
#[btf_map]
static SOCKETS: SocketStorage<SocketRecord> = SocketStorage::new();

/// Network namespaces (by cookie) the daemon listens in: its own and each job namespace it opened
/// a listener in. Written by the daemon only.
#[map]
static NETNS_LISTENERS: HashMap<u64, u8> = HashMap::with_max_entries(16384, 0);

/// Refused (enforce) and let-through (audit) operations, for the daemon's audit log.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(1024 * 1024, 0);

/// `BPF_MAP_TYPE_CGROUP_STORAGE` keyed by the cgroup id alone (Linux 5.9+): one value per cgroup
/// the programs are attached to, shared by all of them. aya-ebpf's `CgroupStorage` keys by
/// (cgroup, attach type), which would give every program its own copy.
#[repr(transparent)]
struct SharedCgroupStorage<V> {
    def: UnsafeCell<bpf_map_def>,
    _v: PhantomData<V>,
}

// SAFETY: the definition is only read, by the loader; programs reach the values through helpers.
unsafe impl<V> Sync for SharedCgroupStorage<V> {}

impl<V> SharedCgroupStorage<V> {
    const fn new() -> Self {
        SharedCgroupStorage {
            def: UnsafeCell::new(bpf_map_def {
                type_: bpf_map_type::BPF_MAP_TYPE_CGROUP_STORAGE,
                key_size: core::mem::size_of::<u64>() as u32,
                value_size: core::mem::size_of::<V>() as u32,
                max_entries: 0,
                map_flags: 0,
                id: 0,
                pinning: 0,
            }),
            _v: PhantomData,
        }
    }

    /// The value of the cgroup the running program is attached to.
    #[inline(always)]
    fn get(&self) -> *mut V {
        // SAFETY: the map definition is valid; flags must be 0.
        unsafe { bpf_get_local_storage(self.def.get().cast(), 0) }.cast()
    }
}

/// A `BPF_MAP_TYPE_SK_STORAGE` definition (BTF) usable with any socket pointer: aya-ebpf's
/// `SkStorage` only takes a sock_addr context, and sock_ops needs it too.
#[repr(C)]
struct SocketStorage<T> {
    r#type: *const [i32; bpf_map_type::BPF_MAP_TYPE_SK_STORAGE as usize],
    key: *const i32,
    value: *const T,
    max_entries: *const [i32; 0],
    map_flags: *const [i32; BPF_F_NO_PREALLOC as usize],
}

// SAFETY: placeholder pointers the loader reads as BTF; never dereferenced.
unsafe impl<T> Sync for SocketStorage<T> {}

impl<T> SocketStorage<T> {
    const fn new() -> Self {
        SocketStorage {
            r#type: core::ptr::null(),
            key: core::ptr::null(),
            value: core::ptr::null(),
            max_entries: core::ptr::null(),
            map_flags: core::ptr::null(),
        }
    }

    #[inline(always)]
    fn as_ptr(&self) -> *mut c_void {
        core::ptr::from_ref(self).cast_mut().cast()
    }

    /// The value stored for socket `sk`; with `create`, a zeroed one is added if there is none
    /// (`None`: none, or no memory for one).
    #[inline(always)]
    fn get(&self, sk: *mut bpf_sock, create: bool) -> Option<*mut T> {
        if sk.is_null() {
            return None;
        }
        let flags = if create {
            u64::from(BPF_SK_STORAGE_GET_F_CREATE)
        } else {
            0
        };
        // SAFETY: `sk` is the program's (non-null) socket; no initial value (zeroed).
        let p =
            unsafe { bpf_sk_storage_get(self.as_ptr(), sk.cast(), core::ptr::null_mut(), flags) };
        (!p.is_null()).then_some(p.cast())
    }

    #[inline(always)]
    fn delete(&self, sk: *mut bpf_sock) {
        if !sk.is_null() {
            // SAFETY: as in `get`.
            let _ = unsafe { bpf_sk_storage_delete(self.as_ptr(), sk.cast()) };
        }
    }
}

// --- job counters --------------------------------------------------------------------------------------

/// The slot of the job the running program's cgroup belongs to (0: no link written yet).
#[inline(always)]
fn job_slot() -> u32 {
    let link = JOB_LINKS.get();
    if link.is_null() {
        return 0;
    }
    // SAFETY: storage of the attach cgroup, valid for the program's run.
    let slot = unsafe { read_volatile(addr_of!((*link).slot)) };
    if slot < MAX_JOB_SLOTS { slot } else { 0 }
}

#[inline(always)]
fn job_state(slot: u32) -> Option<*mut JobState> {
    JOB_STATES.get_ptr_mut(slot)
}

#[inline(always)]
fn read_u64(counter: *const u64) -> u64 {
    // SAFETY: `counter` points into a map value, valid for the program's run.
    unsafe { read_volatile(counter) }
}

/// Adds to a counter that the daemon (mmapped) and other CPUs change at the same time.
#[inline(always)]
fn add(counter: *mut u64, n: u64) {
    // SAFETY: `counter` points into a map value (8-byte aligned), valid for the program's run; it
    // is only ever changed by atomic adds. The old value is not used: a plain atomic add.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, n) };
}

/// Connects of the job (or, slot 0, of all jobs) the daemon has not taken yet.
#[inline(always)]
fn pending(st: *mut JobState) -> u64 {
    // SAFETY: `st` points to a map value.
    let (queued, unqueued, taken) = unsafe {
        (
            read_u64(addr_of!((*st).queued)),
            read_u64(addr_of!((*st).unqueued)),
            read_u64(addr_of!((*st).taken)),
        )
    };
    // The three are read at slightly different moments: never below zero.
    let left = queued.wrapping_sub(unqueued).wrapping_sub(taken);
    if (left as i64) < 0 { 0 } else { left }
}

/// Counts a `BY_CLIENT` record in (`queued`) or out (`unqueued`) for its job and in the totals.
#[inline(always)]
fn count_pending(slot: u32, unqueue: bool) {
    for s in [slot, 0] {
        if let Some(st) = job_state(s) {
            // SAFETY: `st` points to a map value.
            let field = unsafe {
                if unqueue {
                    addr_of_mut!((*st).unqueued)
                } else {
                    addr_of_mut!((*st).queued)
                }
            };
            add(field, 1);
        }
        if slot == 0 {
            break;
        }
    }
}

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

/// Events reported per job, kind and second when no configuration was written yet.
const DEFAULT_EVENTS_PER_SECOND: u64 = 50;

/// Reports an event for the job in `slot`, within its budget of events of this kind per second;
/// beyond it, or when the ring buffer is full, the event is only counted for the daemon
/// (`JobState::suppressed`, `JobState::lost`). The decision never depends on it.
#[inline(always)]
fn report(
    slot: u32,
    kind: u32,
    denied: bool,
    dst: ([u8; 16], u16, u16),
    sock: (u32, u32),
    detail: u32,
) {
    report_in(slot, kind, denied, dst, sock, detail, 0);
}

/// [`report`], for a socket in the network namespace `netns_cookie`.
#[inline(always)]
fn report_in(
    slot: u32,
    kind: u32,
    denied: bool,
    dst: ([u8; 16], u16, u16),
    sock: (u32, u32),
    detail: u32,
    netns_cookie: u64,
) {
    let Some(st) = job_state(slot) else {
        return;
    };
    let k = kind as usize;
    if k >= EVENT_KINDS {
        return;
    }
    let c = caller();
    let budget = config().map_or(DEFAULT_EVENTS_PER_SECOND, |c| {
        u64::from(c.events_per_second)
    });
    // SAFETY: `st` points to a map value; `k` is in bounds.
    let (start, count, suppressed, lost) = unsafe {
        (
            addr_of_mut!((*st).window_start[k]),
            addr_of_mut!((*st).window_count[k]),
            addr_of_mut!((*st).suppressed[k * 2 + denied as usize]),
            addr_of_mut!((*st).lost),
        )
    };
    // One-second windows per kind. Two CPUs may both start a new one: the budget is approximate,
    // the counts are not.
    if c.boot_ns.wrapping_sub(read_u64(start)) >= 1_000_000_000 {
        // SAFETY: as above.
        unsafe {
            write_volatile(start, c.boot_ns);
            write_volatile(count, 0);
        }
    }
    if read_u64(count) >= budget {
        add(suppressed, 1);
        return;
    }
    add(count, 1);
    let event = Event {
        kind,
        denied: denied as u32,
        addr: dst.0,
        port: dst.1,
        family: dst.2,
        sock_type: sock.0,
        protocol: sock.1,
        pid: c.pid,
        tid: c.tid,
        uid: c.uid,
        gid: c.gid,
        detail,
        cgroup_id: c.cgroup_id,
        boot_ns: c.boot_ns,
        comm: c.comm,
        job_slot: slot,
        _pad: 0,
        netns_cookie,
    };
    if EVENTS.output::<Event>(&event, 0).is_err() {
        add(lost, 1);
    }
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
pub(crate) fn gw_connect4(ctx: SockAddrContext) -> i32 {
    match try_connect(&ctx, AF_INET) {
        Ok(r) | Err(r) => r,
    }
}

#[cgroup_sock_addr(connect6)]
pub(crate) fn gw_connect6(ctx: SockAddrContext) -> i32 {
    match try_connect(&ctx, AF_INET6) {
        Ok(r) | Err(r) => r,
    }
}

#[inline(always)]
fn try_connect(ctx: &SockAddrContext, family: u16) -> Result<i32, i32> {
    let sa = ctx.sock_addr;
    let cfg = config();
    let slot = job_slot();
    let refuse = if enforcing(cfg) { REFUSE } else { ALLOW };
    // SAFETY: `sa` is the program context.
    let sock_type = read_u32(unsafe { addr_of!((*sa).type_) });
    let protocol = read_u32(unsafe { addr_of!((*sa).protocol) });
    let (dst, port) = user_addr(sa, family);
    let to = (dst, port, family);

    if sock_type == SOCK_DGRAM {
        return Ok(udp_verdict(slot, cfg, &dst, port, family, protocol));
    }
    if sock_type != SOCK_STREAM || protocol != IPPROTO_TCP {
        // sock_create refuses everything else; this is a second line.
        report(
            slot,
            EVENT_SOCKET,
            enforcing(cfg),
            to,
            (sock_type, protocol),
            0,
        );
        return Ok(refuse);
    }
    let Some(cfg) = cfg else {
        report(slot, EVENT_CONNECT, true, to, (sock_type, protocol), 0);
        return Ok(REFUSE);
    };
    // SAFETY: sock_addr programs always run for a socket.
    let sk = unsafe { (*sa).__bindgen_anon_1.sk };
    let listener_v4 = v4_mapped(cfg.listen_ip4.to_ne_bytes());
    let listener_v6 = words_to_bytes(cfg.listen_ip6);
    if port as u32 == cfg.listen_port && (dst == listener_v4 || dst == listener_v6) {
        // Rewritten already by a copy of these programs attached to a cgroup further down (it
        // left the record): let it through, if its job still has room (the record may also be
        // left from an earlier attempt that failed before it was queued, and must not be a way
        // around the limits). Otherwise it is straight at the listener: nothing the daemon could
        // serve, refused here (every mode), counted in the job's budget.
        let (kind, detail) = match SOCKETS.get(sk, false) {
            // SAFETY: the record is this socket's storage, valid for the program's run.
            Some(r) if unsafe { (*r).info.cookie } != 0 => {
                match room(cfg, unsafe { (*r).info.job_slot }) {
                    Ok(()) => return Ok(ALLOW),
                    Err(detail) => (EVENT_LIMIT, detail),
                }
            }
            _ => (EVENT_LISTENER, 0),
        };
        report(slot, kind, true, to, (sock_type, protocol), detail);
        return Ok(REFUSE);
    }
    // A socket may connect again after a failed attempt: what an earlier attempt stored goes.
    forget(sk);
    let action = lookup_destination(&dst, port).map(|d| d.action);
    if action == Some(ACTION_DIRECT) {
        return Ok(ALLOW);
    }
    if action == Some(ACTION_BLOCK) {
        report(slot, EVENT_CONNECT, true, to, (sock_type, protocol), 0);
        return Ok(REFUSE);
    }
    if action != Some(ACTION_REDIRECT) || cfg.listen_port == 0 {
        report(
            slot,
            EVENT_CONNECT,
            cfg.mode == MODE_ENFORCE,
            to,
            (sock_type, protocol),
            0,
        );
        return Ok(refuse);
    }

    // Redirect, if the job (and the gateway) has room for one more connect waiting for the
    // daemon. Whatever the mode: a full table must refuse, not evict another job's record.
    let record = match room(cfg, slot) {
        Ok(()) => SOCKETS.get(sk, true).ok_or(LIMIT_NO_RECORD),
        Err(detail) => Err(detail),
    };
    let record = match record {
        Ok(record) => record,
        Err(detail) => {
            report(slot, EVENT_LIMIT, true, to, (sock_type, protocol), detail);
            return Ok(REFUSE);
        }
    };
    // IPv4 and IPv4-mapped destinations go to the IPv4 listener, IPv6 to the IPv6 one.
    let to_v4 = family == AF_INET || is_v4_mapped(&dst);
    let c = caller();
    // SAFETY: the context is a socket-bearing program context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // The listener the connect reaches is the one in the socket's network namespace. Where the
    // daemon has none yet it is told, and `gw_syn_hold` keeps the SYN until it has one.
    // SAFETY: sock_addr programs may ask for their socket's network namespace.
    let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    // SAFETY: map lookup by value.
    if unsafe { NETNS_LISTENERS.get(netns_cookie) }.is_none() {
        report_in(
            slot,
            EVENT_NETNS,
            false,
            to,
            (sock_type, protocol),
            0,
            netns_cookie,
        );
    }
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
        job_slot: slot,
        _pad2: 0,
        netns_cookie,
    };
    // SAFETY: `record` is this socket's storage, valid for the program's run.
    unsafe {
        record.write(SocketRecord {
            info,
            client: ClientKey {
                netns_cookie: 0,
                addr: [0; 16],
                port: 0,
                _pad: 0,
            },
            queued: 0,
            _pad: 0,
        });
    }
    // From now on the process's execs are noted (an exec noted earlier is kept). Failing this only
    // costs the daemon its proof: the connection goes on.
    let _ = EXEC_STARTS.insert(c.pid, 0, u64::from(BPF_NOEXIST));

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

/// Whether the job in `slot` (and the gateway) has room for one more connect waiting for the
/// daemon; the `LIMIT_*` it is at otherwise.
#[inline(always)]
fn room(cfg: &Config, slot: u32) -> Result<(), u32> {
    let (Some(job), Some(total)) = (job_state(slot), job_state(0)) else {
        return Err(LIMIT_NO_RECORD);
    };
    if slot == 0 {
        return Err(LIMIT_NO_RECORD);
    }
    if pending(job) >= u64::from(cfg.max_pending_per_job) {
        return Err(LIMIT_PENDING);
    }
    if pending(total) >= u64::from(MAX_PENDING) {
        return Err(LIMIT_TOTAL);
    }
    Ok(())
}

/// Removes the record of a socket (an earlier connect attempt's, or a closed socket's), and its
/// `BY_CLIENT` record if the daemon has not taken it, counting it out.
#[inline(always)]
fn forget(sk: *mut bpf_sock) {
    let Some(record) = SOCKETS.get(sk, false) else {
        return;
    };
    // SAFETY: `record` is this socket's storage, valid for the program's run.
    let (queued, client, slot) =
        unsafe { ((*record).queued, (*record).client, (*record).info.job_slot) };
    if queued != 0 && BY_CLIENT.remove(client).is_ok() {
        count_pending(slot, true);
    }
    SOCKETS.delete(sk);
}

#[inline(always)]
fn udp_verdict(
    slot: u32,
    cfg: Option<&Config>,
    dst: &[u8; 16],
    port: u16,
    family: u16,
    protocol: u32,
) -> i32 {
    // SAFETY: map lookup by value.
    if port == DNS_PORT && unsafe { DNS_RESOLVERS.get(dst) }.is_some() {
        return ALLOW;
    }
    let enforce = enforcing(cfg);
    report(
        slot,
        EVENT_UDP,
        enforce,
        (*dst, port, family),
        (SOCK_DGRAM, protocol),
        0,
    );
    if enforce { REFUSE } else { ALLOW }
}

// --- sock_ops: re-key by client address, clean up at close -----------------------------------------

// Not named `sock_ops`/`sockops`: the section name would clash with the symbol at link time.
#[sock_ops]
pub(crate) fn gw_sock_ops(ctx: SockOpsContext) -> u32 {
    let op = ctx.op();
    if op == BPF_SOCK_OPS_TCP_CONNECT_CB {
        queue(&ctx);
    } else if op == BPF_SOCK_OPS_STATE_CB && ctx.arg(1) == BPF_TCP_CLOSE {
        // The connection is over (or never came about): a record the daemon did not take will
        // never be taken.
        forget(sock_of(&ctx));
    }
    1
}

#[inline(always)]
fn sock_of(ctx: &SockOpsContext) -> *mut bpf_sock {
    // SAFETY: `ops` is the program context; the kernel gives a full socket or null.
    unsafe { (*ctx.ops).__bindgen_anon_2.sk }
}

/// Puts the socket's record in `BY_CLIENT`, keyed as the daemon will see the connection.
#[inline(always)]
fn queue(ctx: &SockOpsContext) {
    let Some(record) = SOCKETS.get(sock_of(ctx), false) else {
        return;
    };
    // SAFETY: `record` is this socket's storage, valid for the program's run.
    let (info, queued) = unsafe { ((*record).info, (*record).queued) };
    // Queued already by a copy of these programs attached further down.
    if queued != 0 || info.cookie == 0 {
        return;
    }
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
        netns_cookie: info.netns_cookie,
        addr,
        port: ctx.local_port(),
        _pad: 0,
    };
    // Never over another record: the connection then arrives without one, and the daemon closes
    // it (and records an anomaly).
    if BY_CLIENT.insert(key, info, u64::from(BPF_NOEXIST)).is_ok() {
        // SAFETY: as above.
        unsafe {
            (*record).client = key;
            (*record).queued = 1;
        }
        count_pending(info.job_slot, false);
    }
    // Be told when the socket closes, to remove what the daemon did not take.
    let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
}

// --- getpeername -------------------------------------------------------------------------------------

#[cgroup_sock_addr(getpeername4)]
pub(crate) fn gw_getpeername4(ctx: SockAddrContext) -> i32 {
    restore_peer(&ctx, AF_INET);
    ALLOW
}

#[cgroup_sock_addr(getpeername6)]
pub(crate) fn gw_getpeername6(ctx: SockAddrContext) -> i32 {
    restore_peer(&ctx, AF_INET6);
    ALLOW
}

#[inline(always)]
fn restore_peer(ctx: &SockAddrContext, family: u16) {
    let sa = ctx.sock_addr;
    // SAFETY: sock_addr programs always run for a socket.
    let Some(record) = SOCKETS.get(unsafe { (*sa).__bindgen_anon_1.sk }, false) else {
        return;
    };
    // SAFETY: `record` is this socket's storage, valid for the program's run.
    let info = unsafe { (*record).info };
    if info.cookie == 0 {
        return;
    }
    let a = info.dst_addr;
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
    set_user_port(sa, info.dst_port);
}

// --- UDP sendmsg ---------------------------------------------------------------------------------------

#[cgroup_sock_addr(sendmsg4)]
pub(crate) fn gw_sendmsg4(ctx: SockAddrContext) -> i32 {
    sendmsg(&ctx, AF_INET)
}

#[cgroup_sock_addr(sendmsg6)]
pub(crate) fn gw_sendmsg6(ctx: SockAddrContext) -> i32 {
    sendmsg(&ctx, AF_INET6)
}

#[inline(always)]
fn sendmsg(ctx: &SockAddrContext, family: u16) -> i32 {
    let sa = ctx.sock_addr;
    let (dst, port) = user_addr(sa, family);
    // SAFETY: `sa` is the program context.
    let protocol = read_u32(unsafe { addr_of!((*sa).protocol) });
    udp_verdict(job_slot(), config(), &dst, port, family, protocol)
}

// --- bind: the listener port is the gateway's ----------------------------------------------------------

#[cgroup_sock_addr(bind4)]
pub(crate) fn gw_bind4(ctx: SockAddrContext) -> i32 {
    bind(&ctx, AF_INET)
}

#[cgroup_sock_addr(bind6)]
pub(crate) fn gw_bind6(ctx: SockAddrContext) -> i32 {
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
        report(
            job_slot(),
            EVENT_BIND,
            true,
            (addr, port, family),
            (0, 0),
            0,
        );
        return REFUSE;
    }
    ALLOW
}

// --- socket creation -------------------------------------------------------------------------------------

#[cgroup_sock(sock_create)]
pub(crate) fn gw_sock_create(ctx: SockContext) -> i32 {
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
        job_slot(),
        EVENT_SOCKET,
        enforce,
        ([0u8; 16], 0, family as u16),
        (sock_type, protocol),
        0,
    );
    if enforce { REFUSE } else { ALLOW }
}

/// Families a job may open sockets in besides inet (which `sock_create` polices): local IPC and
/// netlink (needed by glibc's getaddrinfo and by `ip`; it moves no traffic off the host).
const AF_UNIX: i32 = 1;
const AF_NETLINK: i32 = 16;

#[lsm_cgroup(hook = "socket_create")]
pub(crate) fn gw_socket_family(ctx: LsmContext) -> i32 {
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
        job_slot(),
        EVENT_SOCKET,
        enforce,
        ([0u8; 16], 0, family as u16),
        (sock_type as u32, protocol as u32),
        0,
    );
    if enforce { REFUSE } else { ALLOW }
}

// --- SYN hold: no listener in the socket's network namespace yet ---------------------------------

/// Return values of cgroup_skb programs.
const PASS: i32 = 1;
const DROP: i32 = 0;

/// Drops the SYN of a redirected connect whose network namespace has no gateway listener yet (the
/// connect program told the daemon, which opens one there). TCP does not fail a connect for a SYN
/// that was not sent: it sends it again after its initial timeout (1 s), by then to the listener.
/// Everything else passes: the checks run cheapest first, and only sockets in SYN-SENT reach the
/// record lookup.
#[cgroup_skb(egress)]
pub(crate) fn gw_syn_hold(ctx: SkBuffContext) -> i32 {
    let skb: *mut __sk_buff = ctx.skb.skb;
    // SAFETY: `skb` is the program context; `sk` may be null.
    let sk = unsafe { (*skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return PASS;
    }
    // SAFETY: `sk` is the packet's (non-null) socket.
    let sk = unsafe { bpf_sk_fullsock(sk) };
    if sk.is_null() {
        return PASS;
    }
    // SAFETY: a full socket, valid for the program's run.
    if read_u32(unsafe { addr_of!((*sk).state) }) != BPF_TCP_SYN_SENT {
        return PASS;
    }
    let Some(record) = SOCKETS.get(sk, false) else {
        return PASS;
    };
    // SAFETY: `record` is this socket's storage, valid for the program's run.
    let (cookie, netns_cookie) = unsafe { ((*record).info.cookie, (*record).info.netns_cookie) };
    // SAFETY: map lookup by value.
    if cookie == 0 || unsafe { NETNS_LISTENERS.get(netns_cookie) }.is_some() {
        return PASS;
    }
    DROP
}

/// On entry to execve/execveat, before anything of the process changes: the daemon, having read
/// /proc/PID/exe for a connection, knows from this whether the program it read may have replaced
/// the one that connected (an exec begun after the connect). A failed exec counts too: the
/// daemon then only claims less than it could.
#[tracepoint]
pub(crate) fn gw_exec_start(_ctx: TracePointContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    // Only processes that connected through the gateway (see EXEC_STARTS).
    let _ = EXEC_STARTS.insert(tgid, now, u64::from(BPF_EXIST));
    0
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
