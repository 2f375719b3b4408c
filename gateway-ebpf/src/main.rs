//! cgroup (and cgroup LSM) programs attached to every agent job's cgroup, and one tracepoint.
//!
//! - `connect4`/`connect6`: TCP connects to a destination in the target set are rewritten to the
//!   gateway listener and what the process was and wanted is stored with the socket (socket
//!   storage), if the job has fewer than its limit of connects waiting for the daemon (refused
//!   otherwise, never evicting anything); other TCP destinations are refused (enforce) or let
//!   through and reported (audit); connects straight at the listener are refused. UDP connects
//!   follow the UDP rule below.
//! - `sock_ops` (TCP_CONNECT_CB, still inside connect(2), source port now bound): puts the record
//!   in `BY_CLIENT` under the client's (address, port), which is what the daemon sees on accept();
//!   at TCP_CLOSE removes what the daemon did not take.
//! - `getpeername4`/`getpeername6`: a redirected socket (or DNS socket) reports the original peer.
//! - `syn_hold` (cgroup_skb egress): the listener a redirected connect reaches is the one in the
//!   socket's own network namespace (a container's); where the daemon has none yet (the connect
//!   program reports the namespace), the SYN is dropped and TCP sends it again a second later.
//! - `sendmsg4`/`sendmsg6` (and UDP connects): UDP only to the configured DNS resolvers on port
//!   53; with the DNS forwarder on, sent to it instead (in the daemon's network namespace), the
//!   resolver kept with the socket (`DNS_SOCKETS`); `syn_hold` notes who sends from each source
//!   port (`DNS_CLIENTS`) and `recvmsg4`/`recvmsg6` give the answers the resolver's address.
//! - `sock_create`: only TCP and UDP inet sockets (no raw, ICMP, SCTP, MPTCP …).
//! - `bind4`/`bind6`: nobody in a job binds the gateway's listener port.
//! - `lsm_cgroup/socket_create` (when the BPF LSM is active): sockets only in the inet, unix and
//!   netlink families (no packet, XDP, vsock …: `sock_create` only runs for inet sockets).
//! - `gw_exec_start` (tracepoint on `syscalls:sys_enter_execve(at)`, not per job): when each
//!   process that connected through the gateway last began an exec, so that the daemon does not
//!   attribute a connection to a program the process exec'd after connecting.
//!
//! Reports go through a budget per job (its slot, from the cgroup storage the daemon writes when
//! it attaches) and event kind: beyond it they are only counted, so that one job's flood neither
//! fills the ring buffer for the others nor hides its other kinds of events.
//!
//! Every cgroup program is written as `fn prog(ctx) -> i32 { match try_prog(ctx) { Ok(r) | Err(r) => r } }`
//! and fails closed in enforce mode: an internal error refuses the operation.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]
// The BPF target has no compare-and-swap, so `AtomicU64` offers no `fetch_add`; the intrinsic
// lowers to the BPF atomic add instruction.
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(
    target_arch = "bpf",
    expect(internal_features, reason = "aya-ebpf needs core intrinsics on bpf")
)]

// The programs only exist for the BPF target; a host build (`cargo build --workspace`,
// `cargo clippy --workspace`) compiles an empty binary instead.
#[cfg(target_arch = "bpf")]
mod programs;

#[cfg(not(target_arch = "bpf"))]
fn main() {}
