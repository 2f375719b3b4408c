//! What `gateway run` does to the child between fork and exec, beyond joining the job cgroup:
//! closing the ways around the cgroup hooks that the kernel offers without the BPF LSM.
//!
//! - A seccomp filter: `socket(2)` only in the inet, unix and netlink families (the cgroup
//!   `sock_create` hook only sees inet sockets; packet, vsock, XDP … sockets would carry traffic no
//!   hook sees), no io_uring (its socket operation skips `socket(2)` and so the filter), no x32 or
//!   foreign-architecture system calls (other syscall numbers, same kernel entry points).
//! - For a job that stays root: the capabilities that would let it bypass or tamper with the
//!   gateway leave the bounding set, so nothing it executes (setuid or file-capability binaries
//!   included) regains them.
//!
//! Everything here runs in the forked child: only async-signal-safe calls, no allocation.

use std::io;

/// Removed from the bounding set of a job that runs as root: packet sockets (CAP_NET_RAW), routes
/// and netfilter (CAP_NET_ADMIN), detaching programs, mounts and namespaces (CAP_SYS_ADMIN,
/// CAP_BPF, CAP_PERFMON), reading the gateway's memory (CAP_SYS_PTRACE), kernel modules.
pub(super) const DROPPED_CAPABILITIES: [libc::c_ulong; 7] = [
    12, // CAP_NET_ADMIN
    13, // CAP_NET_RAW
    16, // CAP_SYS_MODULE
    19, // CAP_SYS_PTRACE
    21, // CAP_SYS_ADMIN
    38, // CAP_PERFMON
    39, // CAP_BPF
];

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xc000_003e; // AUDIT_ARCH_X86_64
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xc000_00b7; // AUDIT_ARCH_AARCH64

/// x32 system calls share AUDIT_ARCH_X86_64 and differ by this bit.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
const DENY: u32 = SECCOMP_RET_ERRNO | libc::EPERM as u32;

// Offsets in struct seccomp_data.
const NR: u32 = 0;
const ARCH: u32 = 4;
/// Low 32 bits of args[0] (little-endian).
const ARG0: u32 = 16;

const fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

const fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const JEQ: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const JGE: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
const RET: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

/// The filter, as classic BPF. Jump offsets count instructions after the jump.
const FILTER: [libc::sock_filter; 15] = [
    stmt(LD_W_ABS, ARCH),
    jump(JEQ, AUDIT_ARCH, 1, 0),
    stmt(RET, DENY), // another architecture's system calls
    stmt(LD_W_ABS, NR),
    jump(JGE, X32_SYSCALL_BIT, 8, 0),                 // → deny
    jump(JEQ, libc::SYS_io_uring_setup as u32, 7, 0), // → deny
    jump(JEQ, libc::SYS_socket as u32, 1, 0),
    stmt(RET, SECCOMP_RET_ALLOW),
    stmt(LD_W_ABS, ARG0),
    jump(JEQ, libc::AF_INET as u32, 4, 0),
    jump(JEQ, libc::AF_INET6 as u32, 3, 0),
    jump(JEQ, libc::AF_UNIX as u32, 2, 0),
    jump(JEQ, libc::AF_NETLINK as u32, 1, 0),
    stmt(RET, DENY),
    stmt(RET, SECCOMP_RET_ALLOW),
];

/// Installs the socket-family filter on the calling thread (inherited across fork and exec).
/// Needs CAP_SYS_ADMIN (the child is still root here), so that `no_new_privs` is not required and
/// setuid programs such as sudo keep working inside the job.
pub(super) fn restrict_socket_families() -> io::Result<()> {
    let program = libc::sock_fprog {
        len: FILTER.len() as u16,
        filter: FILTER.as_ptr().cast_mut(),
    };
    // SAFETY: prctl(PR_SET_SECCOMP) reads the filter, which outlives the call (a constant).
    let r = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &program as *const libc::sock_fprog,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Drops [`DROPPED_CAPABILITIES`] from the bounding set (needs CAP_SETPCAP: call while root).
pub(super) fn drop_capabilities() -> io::Result<()> {
    for cap in DROPPED_CAPABILITIES {
        // SAFETY: plain prctl(2) with integer arguments.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Becomes `uid`/`gid` with no supplementary groups (what `Command::uid` does, but after the
/// filter is in place: a filter installed after the switch would need `no_new_privs`).
pub(super) fn switch_user(uid: libc::uid_t, gid: libc::gid_t) -> io::Result<()> {
    // SAFETY: plain system calls with integer arguments (setgroups with an empty list).
    let ok = unsafe {
        libc::setgroups(0, std::ptr::null()) == 0
            && libc::setgid(gid) == 0
            && libc::setuid(uid) == 0
    };
    if ok {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every jump lands inside the program and the last instruction returns.
    #[test]
    fn filter_jumps_stay_inside_the_program() {
        for (i, insn) in FILTER.iter().enumerate() {
            if insn.code == JEQ || insn.code == JGE {
                assert!(
                    i + 1 + usize::from(insn.jt.max(insn.jf)) < FILTER.len(),
                    "{i}"
                );
            }
        }
        assert_eq!(FILTER.last().map(|i| i.code), Some(RET));
        // The x32 and io_uring jumps land on the DENY return; unknown families fall through to it.
        let target = |i: usize| &FILTER[i + 1 + usize::from(FILTER[i].jt)];
        assert_eq!((target(4).code, target(4).k), (RET, DENY));
        assert_eq!((target(5).code, target(5).k), (RET, DENY));
        assert_eq!((FILTER[13].code, FILTER[13].k), (RET, DENY));
        for family in 9..=12 {
            assert_eq!(target(family).k, SECCOMP_RET_ALLOW, "{family}");
        }
    }
}
