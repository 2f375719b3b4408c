//! The programs; see main.rs for what each one does.

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        __sk_buff, BPF_EXIST, BPF_F_MMAPABLE, BPF_F_NO_PREALLOC, BPF_NOEXIST,
        BPF_SK_STORAGE_GET_F_CREATE, BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG,
        BPF_SOCK_OPS_TCP_CONNECT_CB, BPF_TCP_CLOSE, BPF_TCP_CLOSE_WAIT, BPF_TCP_CLOSING,
        BPF_TCP_FIN_WAIT2, BPF_TCP_LAST_ACK, BPF_TCP_SYN_SENT, bpf_map_def, bpf_map_type, bpf_sock,
        bpf_sock_addr,
    },
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        bpf_get_local_storage, bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_ktime_get_boot_ns,
        bpf_sk_fullsock, bpf_sk_storage_delete, bpf_sk_storage_get, generated as raw,
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
    ACTION_BLOCK, ACTION_DIRECT, ACTION_KERNEL, ACTION_REDIRECT, AF_INET, AF_INET6, ClientKey,
    Config, ConnInfo, DESTINATION_PORT_BITS, Destination, DestinationKeyData, DnsClient,
    DnsClientKey, DnsSocket, EVENT_BIND, EVENT_CONNECT, EVENT_KERNEL_CLOSE, EVENT_KERNEL_CONNECT,
    EVENT_KERNEL_DENIED, EVENT_KINDS, EVENT_LIMIT, EVENT_LISTENER, EVENT_NETNS, EVENT_SOCKET,
    EVENT_UDP, Event, FIN_IN, FIN_OUT_ACKED, FLAG_DEBUG_LOG, Grant, GrantKey, JobLink, JobState,
    KernelSocket, LIMIT_NO_DAEMON, LIMIT_NO_RECORD, LIMIT_OPEN, LIMIT_PENDING, LIMIT_RING_FULL,
    LIMIT_TOTAL, LIMIT_UNREAD, MAX_JOB_SLOTS, MAX_PENDING, MODE_ENFORCE, PENDING_SLACK,
    SocketRecord, destination_key, v4_mapped,
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

/// Resolver addresses (IPv4 as IPv4-mapped) that may receive DNS (UDP, and TCP through the forwarder)
/// on port 53.
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

/// Refused (enforce) and let-through (audit) operations, for the daemon's audit log, and the
/// kernel path's connections (connect and close).
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(1024 * 1024, 0);

/// Kernel-path targets each job may reach (written by the daemon when it binds the job).
#[map]
static GRANTS: HashMap<GrantKey, Grant> = HashMap::with_max_entries(65536, 0);

/// The record of each kernel-path connection, until it closes.
#[btf_map]
static KERNEL_SOCKETS: SocketStorage<KernelSocket> = SocketStorage::new();

/// The resolver each DNS socket addressed (its queries go to the gateway's forwarder instead).
#[btf_map]
static DNS_SOCKETS: SocketStorage<DnsSocket> = SocketStorage::new();

/// Who sends from each source port the forwarder receives queries from. LRU: a port reused by
/// another socket is written again by its first datagram, before the forwarder reads it.
#[map]
static DNS_CLIENTS: LruHashMap<DnsClientKey, DnsClient> = LruHashMap::with_max_entries(16384, 0);

/// CLOCK_BOOTTIME until which a daemon reads the events (its event reader refreshes it).
#[map]
static LIVENESS: Array<u64> = Array::with_max_entries(1, 0);

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
    let r = Report {
        netns_cookie,
        addr: dst.0,
        port: dst.1,
        family: dst.2,
        sock_type: sock.0,
        protocol: sock.1,
        slot,
        kind,
        denied: denied as u32,
        detail,
        _pad: 0,
    };
    report_event(&r);
}

/// What [`report`] passes to [`report_event`] (a subprogram takes at most five arguments).
#[repr(C)]
struct Report {
    netns_cookie: u64,
    addr: [u8; 16],
    port: u16,
    family: u16,
    sock_type: u32,
    protocol: u32,
    slot: u32,
    kind: u32,
    denied: u32,
    detail: u32,
    _pad: u32,
}

/// [`report`]'s work, as a subprogram of its own: inlined in every caller it would take the
/// connect programs past the 512 bytes of stack.
#[inline(never)]
fn report_event(r: &Report) {
    let slot = r.slot;
    let Some(st) = job_state(slot) else {
        return;
    };
    let k = r.kind as usize;
    if k >= EVENT_KINDS {
        return;
    }
    let denied = r.denied != 0;
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_boot_ns() };
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
    if now.wrapping_sub(read_u64(start)) >= 1_000_000_000 {
        // SAFETY: as above.
        unsafe {
            write_volatile(start, now);
            write_volatile(count, 0);
        }
    }
    if read_u64(count) >= budget {
        add(suppressed, 1);
        return;
    }
    add(count, 1);
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        add(lost, 1);
        return;
    };
    let e = entry.as_mut_ptr();
    fill_event(e, r.kind, slot, true);
    // SAFETY: as in `fill_event`.
    unsafe {
        addr_of_mut!((*e).denied).write(r.denied);
        addr_of_mut!((*e).addr).write(r.addr);
        addr_of_mut!((*e).port).write(r.port);
        addr_of_mut!((*e).family).write(r.family);
        addr_of_mut!((*e).sock_type).write(r.sock_type);
        addr_of_mut!((*e).protocol).write(r.protocol);
        addr_of_mut!((*e).detail).write(r.detail);
        addr_of_mut!((*e).netns_cookie).write(r.netns_cookie);
    }
    entry.submit(0);
}

/// Writes an event field by field into its place in the ring buffer (`e` is a reserved entry):
/// no copy of it, nor of the caller's identity, on the stack (the connect programs have no room
/// for them).
#[inline(always)]
fn fill_event(e: *mut Event, kind: u32, slot: u32, with_caller: bool) {
    // SAFETY: `e` points to a reserved, writable ring buffer entry of `Event`'s size; every
    // field is written once, with plain stores.
    unsafe {
        addr_of_mut!((*e).kind).write(kind);
        addr_of_mut!((*e).denied).write(0);
        addr_of_mut!((*e).addr).write([0; 16]);
        addr_of_mut!((*e).port).write(0);
        addr_of_mut!((*e).family).write(0);
        addr_of_mut!((*e).sock_type).write(0);
        addr_of_mut!((*e).protocol).write(0);
        addr_of_mut!((*e).detail).write(0);
        addr_of_mut!((*e).job_slot).write(slot);
        addr_of_mut!((*e)._pad).write(0);
        addr_of_mut!((*e).netns_cookie).write(0);
        addr_of_mut!((*e).cookie).write(0);
        addr_of_mut!((*e).bytes_up).write(0);
        addr_of_mut!((*e).bytes_down).write(0);
        addr_of_mut!((*e).boot_ns).write(bpf_ktime_get_boot_ns());
        if with_caller {
            let pid_tgid = bpf_get_current_pid_tgid();
            let uid_gid = bpf_get_current_uid_gid();
            addr_of_mut!((*e).pid).write((pid_tgid >> 32) as u32);
            addr_of_mut!((*e).tid).write(pid_tgid as u32);
            addr_of_mut!((*e).uid).write(uid_gid as u32);
            addr_of_mut!((*e).gid).write((uid_gid >> 32) as u32);
            addr_of_mut!((*e).cgroup_id).write(bpf_get_current_cgroup_id());
            let comm = addr_of_mut!((*e).comm);
            if raw::bpf_get_current_comm(comm.cast(), 16) != 0 {
                comm.write([0; 16]);
            }
        } else {
            addr_of_mut!((*e).pid).write(0);
            addr_of_mut!((*e).tid).write(0);
            addr_of_mut!((*e).uid).write(0);
            addr_of_mut!((*e).gid).write(0);
            addr_of_mut!((*e).cgroup_id).write(0);
            addr_of_mut!((*e).comm).write([0; 16]);
        }
    }
}

/// Writes a destination (and socket type) into an event being filled in place.
#[inline(always)]
fn fill_destination(e: *mut Event, a: &Connect) {
    // SAFETY: as in `fill_event`.
    unsafe {
        addr_of_mut!((*e).addr).write(a.dst);
        addr_of_mut!((*e).port).write(a.port);
        addr_of_mut!((*e).family).write(a.family);
        addr_of_mut!((*e).sock_type).write(a.sock_type);
        addr_of_mut!((*e).protocol).write(a.protocol);
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

/// Writes an address (IPv4 as IPv4-mapped, as the maps keep them) and port into the context.
#[inline(always)]
fn set_user_addr(sa: *mut bpf_sock_addr, family: u16, a: &[u8; 16], port: u16) {
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
    set_user_port(sa, port);
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
        return Ok(udp(ctx, slot, cfg, &dst, port, family, protocol));
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
    let destination = lookup_destination(&dst, port);
    // SAFETY: sock_addr programs may ask for their socket's network namespace.
    let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    if let Some(d) = destination
        && d.action == ACTION_KERNEL
        && netns_cookie == cfg.own_netns_cookie
    {
        let args = Connect {
            dst,
            port,
            family,
            sock_type,
            protocol,
            slot,
            target_index: d.target_index,
        };
        let refused = kernel_connect(ctx.as_ptr(), sk, &args);
        if refused == 0 {
            return Ok(ALLOW);
        }
        report(
            slot,
            refused >> 16,
            true,
            to,
            (sock_type, protocol),
            refused & 0xffff,
        );
        return Ok(REFUSE);
    }
    // An earlier kernel-path attempt of this socket is over.
    kernel_end(sk, 0, 0);
    let action = match destination {
        // A job in a network namespace of its own (a container) goes through the gateway, as on
        // `path = "proxy"`: the destination is reached from the host's namespace, where the
        // target was configured, not from one that may have no route to it.
        Some(d) if d.action == ACTION_KERNEL => Some(ACTION_REDIRECT),
        Some(d) => Some(d.action),
        // DNS over TCP to a resolver jobs may use goes to the gateway's forwarder, as over UDP
        // (the daemon tells it from a target by its destination).
        // SAFETY: map lookup by value.
        None if port == DNS_PORT
            && cfg.dns_port != 0
            && unsafe { DNS_RESOLVERS.get(dst) }.is_some() =>
        {
            Some(ACTION_REDIRECT)
        }
        None => None,
    };
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

    let args = Connect {
        dst,
        port,
        family,
        sock_type,
        protocol,
        slot,
        target_index: 0,
    };
    let refused = redirect(ctx.as_ptr(), sk, &args);
    if refused != 0 {
        report(
            slot,
            EVENT_LIMIT,
            true,
            to,
            (sock_type, protocol),
            refused & 0xffff,
        );
        return Ok(REFUSE);
    }
    // The listener the connect reaches is the one in the socket's network namespace. Where the
    // daemon has none yet it is told, and `gw_syn_hold` keeps the SYN until it has one.
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
    // IPv4 and IPv4-mapped destinations go to the IPv4 listener, IPv6 to the IPv6 one.
    if family == AF_INET {
        // SAFETY: `sa` is the program context; 4-byte store.
        write_u32(unsafe { addr_of_mut!((*sa).user_ip4) }, cfg.listen_ip4);
    } else if is_v4_mapped(&dst) {
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
        // SAFETY: the context is a socket-bearing program context.
        let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
        let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
        debug!(ctx, "redirect pid={} cookie={} port={}", pid, cookie, port);
    }
    Ok(ALLOW)
}

/// What the connect program read from its context, for the subprograms below: they get it
/// through a pointer to the program's stack and never load from the context themselves (the
/// compiler may then address a context field through a computed pointer, which the verifier
/// refuses).
#[repr(C)]
struct Connect {
    dst: [u8; 16],
    port: u16,
    family: u16,
    sock_type: u32,
    protocol: u32,
    slot: u32,
    /// Kernel path: the target's index.
    target_index: u32,
}

/// Keeps the record of a connect to a target with its socket, if the job (and the gateway) has
/// room for one more connect waiting for the daemon (the caller then rewrites the destination to
/// the listener). Returns 0, or the `LIMIT_*` it refuses for (reported by the caller). A
/// subprogram of its own, like [`kernel_connect`], to keep each call chain's stack small.
#[inline(never)]
fn redirect(ctx: *mut c_void, sk: *mut bpf_sock, a: &Connect) -> u32 {
    let Some(cfg) = config() else {
        return LIMIT_NO_RECORD;
    };
    let slot = a.slot;
    // Whatever the mode: a full table must refuse, not evict another job's record.
    if let Err(detail) = room(cfg, slot) {
        return detail;
    }
    let Some(record) = SOCKETS.get(sk, true) else {
        return LIMIT_NO_RECORD;
    };
    let to_v4 = a.family == AF_INET || is_v4_mapped(&a.dst);
    // SAFETY: the context is a socket-bearing program context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx) };
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    let pid = (pid_tgid >> 32) as u32;
    // Written field by field into the socket storage: no copy of it on the stack.
    // SAFETY: `record` is this socket's storage, valid for the program's run.
    unsafe {
        let info = addr_of_mut!((*record).info);
        addr_of_mut!((*info).dst_addr).write(a.dst);
        addr_of_mut!((*info).dst_port).write(a.port);
        addr_of_mut!((*info).family).write(a.family);
        addr_of_mut!((*info).listener_family).write(if to_v4 { AF_INET } else { AF_INET6 });
        addr_of_mut!((*info)._pad).write(0);
        addr_of_mut!((*info).pid).write(pid);
        addr_of_mut!((*info).tid).write(pid_tgid as u32);
        addr_of_mut!((*info).uid).write(uid_gid as u32);
        addr_of_mut!((*info).gid).write((uid_gid >> 32) as u32);
        addr_of_mut!((*info).cgroup_id).write(bpf_get_current_cgroup_id());
        addr_of_mut!((*info).cookie).write(cookie);
        addr_of_mut!((*info).boot_ns).write(bpf_ktime_get_boot_ns());
        let comm = addr_of_mut!((*info).comm);
        if raw::bpf_get_current_comm(comm.cast(), 16) != 0 {
            comm.write([0; 16]);
        }
        addr_of_mut!((*info).job_slot).write(slot);
        addr_of_mut!((*info)._pad2).write(0);
        addr_of_mut!((*info).netns_cookie).write(bpf_get_netns_cookie(ctx));
        addr_of_mut!((*record).client).write(ClientKey {
            netns_cookie: 0,
            addr: [0; 16],
            port: 0,
            _pad: 0,
        });
        addr_of_mut!((*record).queued).write(0);
        addr_of_mut!((*record)._pad).write(0);
    }
    // From now on the process's execs are noted (an exec noted earlier is kept). Failing this only
    // costs the daemon its proof: the connection goes on.
    let _ = EXEC_STARTS.insert(pid, 0, u64::from(BPF_NOEXIST));
    0
}

// --- kernel path -------------------------------------------------------------------------------------

/// A connect to a `path = "kernel"` target: let through unchanged when a daemon reads the events,
/// the job holds a grant for the target, is under its limits, and the connect's record is in the
/// ring buffer; refused otherwise (every mode: this is the target's policy, not the audit of
/// non-targets). An allowed connect is never budgeted: it is recorded, or refused. Returns 0 to
/// let it through, or the refusal to report ([`refusal`]).
///
/// A subprogram of its own, which reports nothing itself: inlined, or calling `report_event`, it
/// would take the connect programs' call chain past the 512 bytes of stack.
#[inline(never)]
fn kernel_connect(ctx: *mut c_void, sk: *mut bpf_sock, a: &Connect) -> u32 {
    let Some(cfg) = config() else {
        return refusal(EVENT_LIMIT, LIMIT_NO_RECORD);
    };
    let slot = a.slot;
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    if !LIVENESS.get(0).is_some_and(|deadline| now < *deadline) {
        return refusal(EVENT_LIMIT, LIMIT_NO_DAEMON);
    }
    let link = JOB_LINKS.get();
    let (Some(st), false) = (job_state(slot), slot == 0 || link.is_null()) else {
        return refusal(EVENT_LIMIT, LIMIT_NO_RECORD);
    };
    let key = GrantKey {
        // SAFETY: storage of the attach cgroup, valid for the program's run.
        job_cgroup_id: unsafe { read_volatile(addr_of!((*link).job_cgroup_id)) },
        target_index: a.target_index,
        _pad: 0,
    };
    // SAFETY: map lookup by value.
    if !unsafe { GRANTS.get(key) }.is_some_and(|g| now < g.expires_boot_ns) {
        return refusal(EVENT_KERNEL_DENIED, a.target_index);
    }
    // Checked after the grant: a record a socket kept (from a connect that failed before its
    // handshake started) lets nothing through that its job may no longer do.
    if let Some(ks) = KERNEL_SOCKETS.get(sk, false) {
        // SAFETY: this socket's storage, valid for the program's run.
        let (open, port) = unsafe { ((*ks).open, (*ks).dst_port) };
        // Recorded already: a copy of these programs attached further down let this very
        // connect through, or the socket tries the same destination again.
        // SAFETY: as above.
        if open != 0 && port == u32::from(a.port) && unsafe { same_addr(&(*ks).dst_addr, &a.dst) } {
            return 0;
        }
        kernel_end(sk, 0, 0);
    }
    // SAFETY: `st` points to a map value.
    let (opened, closed, written, read) = unsafe {
        (
            addr_of_mut!((*st).kernel_opened),
            addr_of_mut!((*st).kernel_closed),
            addr_of_mut!((*st).kernel_written),
            addr_of!((*st).kernel_read),
        )
    };
    if difference(read_u64(opened), read_u64(closed)) >= u64::from(cfg.max_open_per_job) {
        return refusal(EVENT_LIMIT, LIMIT_OPEN);
    }
    // One job's unread records are bounded, so that its flood cannot fill the ring buffer the
    // other jobs' records go through.
    if difference(read_u64(written), read_u64(read)) >= u64::from(cfg.max_pending_per_job) {
        return refusal(EVENT_LIMIT, LIMIT_UNREAD);
    }
    let Some(ks) = KERNEL_SOCKETS.get(sk, true) else {
        return refusal(EVENT_LIMIT, LIMIT_NO_RECORD);
    };
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        // Nothing unrecorded goes through.
        KERNEL_SOCKETS.delete(sk);
        return refusal(EVENT_LIMIT, LIMIT_RING_FULL);
    };
    // SAFETY: `ctx` is the program's (socket-bearing) context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx) };
    let e = entry.as_mut_ptr();
    fill_event(e, EVENT_KERNEL_CONNECT, slot, true);
    fill_destination(e, a);
    // SAFETY: as in `fill_event`; `ks` is this socket's storage, valid for the program's run.
    let pid = unsafe {
        addr_of_mut!((*e).detail).write(a.target_index);
        addr_of_mut!((*e).cookie).write(cookie);
        addr_of_mut!((*ks).cookie).write(cookie);
        addr_of_mut!((*ks).dst_addr).write(a.dst);
        addr_of_mut!((*ks).dst_port).write(u32::from(a.port));
        addr_of_mut!((*ks).job_slot).write(slot);
        addr_of_mut!((*ks).open).write(1);
        addr_of_mut!((*ks).fins).write(0);
        read_volatile(addr_of!((*e).pid))
    };
    entry.submit(0);
    add(written, 1);
    add(opened, 1);
    // As for redirected connects: the daemon checks the process it describes against its execs.
    let _ = EXEC_STARTS.insert(pid, 0, u64::from(BPF_NOEXIST));
    0
}

/// A refusal as the subprograms return it: the event kind to report, and its detail.
#[inline(always)]
const fn refusal(kind: u32, detail: u32) -> u32 {
    (kind << 16) | (detail & 0xffff)
}

#[inline(always)]
fn same_addr(a: &[u8; 16], b: &[u8; 16]) -> bool {
    // Word by word: a byte array comparison would call bcmp, one more subprogram frame.
    let mut i = 0;
    while i < 16 {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// `a - b` of two running totals read at slightly different moments: never below zero.
#[inline(always)]
fn difference(a: u64, b: u64) -> u64 {
    let d = a.wrapping_sub(b);
    if (d as i64) < 0 { 0 } else { d }
}

/// Records the end of a socket's kernel-path connection (once), with its byte counts, and counts
/// it out of its job's open connections.
#[inline(always)]
fn kernel_end(sk: *mut bpf_sock, bytes_up: u64, bytes_down: u64) {
    let Some(ks) = KERNEL_SOCKETS.get(sk, false) else {
        return;
    };
    // SAFETY: this socket's storage, valid for the program's run.
    let r = unsafe { *ks };
    KERNEL_SOCKETS.delete(sk);
    if r.open == 0 {
        return;
    }
    let Some(st) = job_state(r.job_slot) else {
        return;
    };
    // SAFETY: `st` points to a map value.
    let (closed, written, lost) = unsafe {
        (
            addr_of_mut!((*st).kernel_closed),
            addr_of_mut!((*st).kernel_written),
            addr_of_mut!((*st).lost),
        )
    };
    add(closed, 1);
    // Payload bytes: the counters include our SYN (once anything was acknowledged) and the FINs
    // noted above.
    let bytes_up = if bytes_up == 0 {
        0
    } else {
        bytes_up.saturating_sub(1 + u64::from(r.fins & FIN_OUT_ACKED != 0))
    };
    let bytes_down = bytes_down.saturating_sub(u64::from(r.fins & FIN_IN != 0));
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        add(lost, 1);
        return;
    };
    let e = entry.as_mut_ptr();
    fill_event(e, EVENT_KERNEL_CLOSE, r.job_slot, false);
    // SAFETY: as in `fill_event`.
    unsafe {
        addr_of_mut!((*e).addr).write(r.dst_addr);
        addr_of_mut!((*e).port).write(r.dst_port as u16);
        addr_of_mut!((*e).sock_type).write(SOCK_STREAM);
        addr_of_mut!((*e).protocol).write(IPPROTO_TCP);
        addr_of_mut!((*e).cookie).write(r.cookie);
        addr_of_mut!((*e).bytes_up).write(bytes_up);
        addr_of_mut!((*e).bytes_down).write(bytes_down);
    }
    entry.submit(0);
    add(written, 1);
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
    // The forwarder's port is reached only through the rewrite below (whatever the mode): what it
    // receives is attributed by the socket's record, which only that rewrite writes.
    let enforce =
        enforcing(cfg) || cfg.is_some_and(|c| c.dns_port != 0 && u32::from(port) == c.dns_port);
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
        // A kernel-path connection: its close is recorded.
        if KERNEL_SOCKETS.get(sock_of(&ctx), false).is_some() {
            let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
        }
    } else if op == BPF_SOCK_OPS_STATE_CB {
        let (old, new) = (ctx.arg(0), ctx.arg(1));
        let sk = sock_of(&ctx);
        note_fins(sk, old, new);
        if new == BPF_TCP_CLOSE {
            // The connection is over (or never came about): a record the daemon did not take
            // will never be taken.
            forget(sk);
            // SAFETY: `ops` is the program context; 8-byte loads of its byte counters.
            let (acked, received) = unsafe {
                (
                    read_volatile(addr_of!((*ctx.ops).bytes_acked)),
                    read_volatile(addr_of!((*ctx.ops).bytes_received)),
                )
            };
            kernel_end(sk, acked, received);
        }
    }
    1
}

/// Notes, from a kernel-path socket's state changes, which FINs its byte counters include (they
/// count sequence space: the SYN, and each FIN, take one), so that its record says payload bytes.
/// A socket that enters time-wait from FIN_WAIT2 is taken to have received the peer's FIN.
#[inline(always)]
fn note_fins(sk: *mut bpf_sock, old: u32, new: u32) {
    let Some(ks) = KERNEL_SOCKETS.get(sk, false) else {
        return;
    };
    let seen = match (old, new) {
        (_, BPF_TCP_CLOSE_WAIT) | (_, BPF_TCP_CLOSING) | (BPF_TCP_FIN_WAIT2, BPF_TCP_CLOSE) => {
            FIN_IN
        }
        (_, BPF_TCP_FIN_WAIT2)
        | (BPF_TCP_LAST_ACK, BPF_TCP_CLOSE)
        | (BPF_TCP_CLOSING, BPF_TCP_CLOSE) => FIN_OUT_ACKED,
        _ => 0,
    };
    if seen != 0 {
        // SAFETY: this socket's storage, valid for the program's run.
        unsafe {
            let fins = addr_of_mut!((*ks).fins);
            fins.write(fins.read() | seen);
        }
    }
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
        // A UDP socket connected to a resolver is connected to the DNS forwarder.
        restore_resolver(ctx, family);
        return;
    };
    // SAFETY: `record` is this socket's storage, valid for the program's run.
    let info = unsafe { (*record).info };
    if info.cookie == 0 {
        return;
    }
    let a = info.dst_addr;
    set_user_addr(sa, family, &a, info.dst_port);
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
    udp(ctx, job_slot(), config(), &dst, port, family, protocol)
}

/// IPv4-mapped 127.0.0.1, and ::1: where the DNS forwarder listens.
const LOOPBACK_V4: [u8; 16] = v4_mapped([127, 0, 0, 1]);
const LOOPBACK_V6: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

/// A UDP connect or datagram: [`udp_verdict`], and DNS to a resolver sent to the gateway's DNS
/// forwarder instead when it is on (on loopback of the socket's network namespace, where the
/// daemon listens), remembering the resolver for the answers and for the forwarder.
#[inline(always)]
fn udp(
    ctx: &SockAddrContext,
    slot: u32,
    cfg: Option<&Config>,
    dst: &[u8; 16],
    port: u16,
    family: u16,
    protocol: u32,
) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: sock_addr programs always run for a socket.
    let sk = unsafe { (*sa).__bindgen_anon_1.sk };
    if let Some(c) = cfg
        && c.dns_port != 0
        && u32::from(port) == c.dns_port
        && (same_addr(dst, &LOOPBACK_V4) || same_addr(dst, &LOOPBACK_V6))
        // SAFETY: the record is this socket's storage, valid for the program's run.
        && DNS_SOCKETS.get(sk, false).is_some_and(|d| unsafe { (*d).set } != 0)
    {
        // Rewritten already by a copy of these programs attached further down, or the socket
        // sends to the forwarder again: it is the socket's DNS either way.
        return ALLOW;
    }
    let verdict = udp_verdict(slot, cfg, dst, port, family, protocol);
    let Some(c) = cfg else {
        return verdict;
    };
    if verdict != ALLOW || c.dns_port == 0 || port != DNS_PORT {
        return verdict;
    }
    // SAFETY: map lookup by value.
    if unsafe { DNS_RESOLVERS.get(dst) }.is_none() {
        return verdict;
    }
    // The forwarder the datagram reaches is the one in the socket's network namespace. Where the
    // daemon has none yet it is told, and `gw_syn_hold` drops the datagram until it has one (the
    // resolver library asks again).
    // SAFETY: sock_addr programs may ask for their socket's network namespace.
    let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    // SAFETY: map lookup by value.
    if unsafe { NETNS_LISTENERS.get(netns_cookie) }.is_none() {
        report_in(
            slot,
            EVENT_NETNS,
            false,
            (*dst, port, family),
            (SOCK_DGRAM, protocol),
            0,
            netns_cookie,
        );
    }
    let Some(record) = DNS_SOCKETS.get(sk, true) else {
        // Fail closed: without the record its answers could not be given back.
        report(
            slot,
            EVENT_LIMIT,
            true,
            (*dst, port, family),
            (SOCK_DGRAM, protocol),
            LIMIT_NO_RECORD,
        );
        return REFUSE;
    };
    // SAFETY: this socket's storage, valid for the program's run.
    unsafe {
        addr_of_mut!((*record).resolver).write(*dst);
        addr_of_mut!((*record).port).write(u32::from(port));
        addr_of_mut!((*record).set).write(1);
        addr_of_mut!((*record).netns_cookie).write(netns_cookie);
    }
    if family == AF_INET {
        // SAFETY: `sa` is the program context; 4-byte store.
        write_u32(
            unsafe { addr_of_mut!((*sa).user_ip4) },
            u32::from_ne_bytes([127, 0, 0, 1]),
        );
    } else if is_v4_mapped(dst) {
        set_user_ip6(
            sa,
            [
                0,
                0,
                u32::from_ne_bytes([0, 0, 0xff, 0xff]),
                u32::from_ne_bytes([127, 0, 0, 1]),
            ],
        );
    } else {
        set_user_ip6(sa, [0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])]);
    }
    set_user_port(sa, c.dns_port as u16);
    ALLOW
}

// --- UDP recvmsg: the forwarder's answers come from the resolver the job asked -------------------

#[cgroup_sock_addr(recvmsg4)]
pub(crate) fn gw_recvmsg4(ctx: SockAddrContext) -> i32 {
    restore_resolver(&ctx, AF_INET);
    ALLOW
}

#[cgroup_sock_addr(recvmsg6)]
pub(crate) fn gw_recvmsg6(ctx: SockAddrContext) -> i32 {
    restore_resolver(&ctx, AF_INET6);
    ALLOW
}

#[inline(always)]
fn restore_resolver(ctx: &SockAddrContext, family: u16) {
    let Some(cfg) = config() else {
        return;
    };
    if cfg.dns_port == 0 {
        return;
    }
    let sa = ctx.sock_addr;
    let (src, port) = user_addr(sa, family);
    if u32::from(port) != cfg.dns_port
        || !(same_addr(&src, &LOOPBACK_V4) || same_addr(&src, &LOOPBACK_V6))
    {
        return;
    }
    // SAFETY: sock_addr programs always run for a socket.
    let Some(record) = DNS_SOCKETS.get(unsafe { (*sa).__bindgen_anon_1.sk }, false) else {
        return;
    };
    // SAFETY: this socket's storage, valid for the program's run.
    let (a, resolver_port, set) = unsafe { ((*record).resolver, (*record).port, (*record).set) };
    if set == 0 {
        return;
    }
    set_user_addr(sa, family, &a, resolver_port as u16);
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
    if port != 0
        && (u32::from(port) == cfg.listen_port
            || (cfg.dns_port != 0 && u32::from(port) == cfg.dns_port))
    {
        // Whatever the mode: a job listening here while the gateway restarts (or before it
        // listens in the job's network namespace) would receive redirected connections or DNS
        // queries.
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
/// Drop, with congestion notification: UDP's sendmsg then reports success (an ENOBUFS it
/// swallows without IP_RECVERR), so a resolver library waits for its timeout and asks again
/// instead of giving up on an EPERM.
const DROP_QUIETLY: i32 = 2;

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
    if read_u32(unsafe { addr_of!((*sk).protocol) }) == IPPROTO_UDP {
        return note_dns_client(skb, sk);
    }
    // SAFETY: as above.
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

/// A datagram of a DNS socket on its way to the forwarder: who sends from its source port (now
/// bound, which it may not have been at connect), for the forwarder to attribute the query.
/// Dropped (quietly) while the daemon has no forwarder in the socket's network namespace.
#[inline(always)]
fn note_dns_client(skb: *mut __sk_buff, sk: *mut bpf_sock) -> i32 {
    let Some(record) = DNS_SOCKETS.get(sk, false) else {
        return PASS;
    };
    // SAFETY: this socket's storage, valid for the program's run.
    let (resolver, resolver_port, set, netns_cookie) = unsafe {
        (
            (*record).resolver,
            (*record).port,
            (*record).set,
            (*record).netns_cookie,
        )
    };
    let link = JOB_LINKS.get();
    if set == 0 || link.is_null() {
        return PASS;
    }
    // SAFETY: map lookup by value.
    if unsafe { NETNS_LISTENERS.get(netns_cookie) }.is_none() {
        return DROP_QUIETLY;
    }
    // SAFETY: `skb` is the program context, `sk` a full socket; storage of the attach cgroup.
    let (protocol, src_port, job_cgroup_id, job_slot) = unsafe {
        (
            read_u32(addr_of!((*skb).protocol)),
            read_u32(addr_of!((*sk).src_port)),
            read_volatile(addr_of!((*link).job_cgroup_id)),
            read_volatile(addr_of!((*link).slot)),
        )
    };
    let key = DnsClientKey {
        netns_cookie,
        port: src_port,
        family: if protocol == u32::from(ETH_P_IP.to_be()) {
            u32::from(AF_INET)
        } else {
            u32::from(AF_INET6)
        },
    };
    let client = DnsClient {
        job_cgroup_id,
        // SAFETY: the program's context.
        cgroup_id: unsafe { raw::bpf_skb_cgroup_id(skb) },
        resolver,
        resolver_port,
        job_slot,
    };
    let _ = DNS_CLIENTS.insert(key, client, 0);
    PASS
}

const ETH_P_IP: u16 = 0x0800;

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
