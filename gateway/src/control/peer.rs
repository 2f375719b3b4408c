//! Which cgroup the process on the other end of a control connection is in, without trusting a
//! pid that may belong to another process by the time it is looked at.
//!
//! SO_PEERCRED gives the pid of the process that connected; it may have exited since, and its pid
//! be reused by a process outside any job. Where the kernel has SO_PEERPIDFD (Linux 6.5), the
//! kernel hands out a pidfd of that very process: its cgroup is read from /proc and then the
//! pidfd says whether the process was still alive (so the pid was still its own). Elsewhere the
//! pid's start time must be from before the connection was accepted, before and after reading.

use std::os::fd::{AsFd, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd};

use crate::cgroup;

/// The cgroup (as in /proc/PID/cgroup) of the process that connected, or why it cannot be known.
pub(super) fn peer_cgroup(socket: &impl AsFd, accepted_at_ns: u64) -> Result<String, String> {
    match peer_pidfd(socket.as_fd()) {
        Ok(pidfd) => cgroup_of_pidfd(pidfd.as_fd()),
        Err(e) if e.raw_os_error() == Some(libc::ENOPROTOOPT) => {
            let cred = nix::sys::socket::getsockopt(
                &socket.as_fd(),
                nix::sys::socket::sockopt::PeerCredentials,
            )
            .map_err(|e| format!("cannot read peer credentials: {e}"))?;
            cgroup_of_pid_started_before(cred.pid() as u32, accepted_at_ns)
        }
        Err(e) => Err(format!("cannot identify the peer process: {e}")),
    }
}

const EXITED: &str = "the process that connected has exited (its pid may be another's now)";

/// The cgroup of the process a pidfd refers to, if it was alive throughout the reading.
fn cgroup_of_pidfd(pidfd: BorrowedFd<'_>) -> Result<String, String> {
    let pid = pid_of_pidfd(pidfd).ok_or(EXITED)?;
    let cgroup = cgroup::process_cgroup(pid);
    // Alive now means alive while /proc/PID was read: the pid was still its own.
    if !alive(pidfd) {
        return Err(EXITED.into());
    }
    cgroup.ok_or_else(|| "cannot read the caller's cgroup".into())
}

/// The pid a pidfd refers to in our pid namespace (its fdinfo), `None` once it was reaped.
fn pid_of_pidfd(pidfd: BorrowedFd<'_>) -> Option<u32> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd())).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .and_then(|p| p.trim().parse::<i64>().ok())
        .filter(|p| *p > 0)
        .and_then(|p| u32::try_from(p).ok())
}

/// Whether the process of a pidfd exists (signal 0 delivers nothing; a zombie still holds its pid).
fn alive(pidfd: BorrowedFd<'_>) -> bool {
    // SAFETY: pidfd_send_signal(2) with signal 0 and no siginfo only checks the target.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            0,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    r == 0
}

/// SO_PEERPIDFD: a pidfd of the process that connected (ENOPROTOOPT before Linux 6.5).
fn peer_pidfd(socket: BorrowedFd<'_>) -> std::io::Result<OwnedFd> {
    let mut fd: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt(2) writes at most `len` bytes (one int) into `fd`.
    let r = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERPIDFD,
            (&raw mut fd).cast(),
            &raw mut len,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if fd < 0 {
        return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
    }
    // SAFETY: the kernel just created this descriptor for us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Without pidfds: the cgroup of `pid` if that process started before the connection was
/// accepted (a process started after cannot be the one that connected), checked before and after
/// reading.
fn cgroup_of_pid_started_before(pid: u32, accepted_at_ns: u64) -> Result<String, String> {
    let started = crate::procfs::start_time_ns(pid).ok_or(EXITED)?;
    if started > accepted_at_ns {
        return Err(EXITED.into());
    }
    let cgroup = cgroup::process_cgroup(pid);
    if crate::procfs::start_time_ns(pid) != Some(started) {
        return Err(EXITED.into());
    }
    cgroup.ok_or_else(|| "cannot read the caller's cgroup".into())
}

/// CLOCK_BOOTTIME in nanoseconds (what /proc/PID/stat start times count from).
pub(super) fn boot_time_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    fn own_cgroup() -> String {
        cgroup::process_cgroup(std::process::id()).unwrap()
    }

    #[test]
    fn a_live_peer_is_found_by_its_pidfd_and_by_its_start_time() {
        let (a, _b) = UnixStream::pair().unwrap();
        assert_eq!(peer_cgroup(&a, boot_time_ns()), Ok(own_cgroup()));
        assert_eq!(
            cgroup_of_pid_started_before(std::process::id(), boot_time_ns()),
            Ok(own_cgroup())
        );
        // A process that started after the connection was accepted is not the one that connected.
        assert!(cgroup_of_pid_started_before(std::process::id(), 1).is_err());
    }

    #[test]
    fn a_peer_that_exited_is_refused_whoever_has_its_pid_now() {
        let dir = std::env::temp_dir().join(format!("gw-peer-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let listener = std::os::unix::net::UnixListener::bind(&dir).unwrap();
        // A child connects and exits (and is reaped) before we look at it.
        let status = std::process::Command::new("python3")
            .arg("-c")
            .arg(format!(
                "import socket; s = socket.socket(socket.AF_UNIX); s.connect({:?})",
                dir.display().to_string()
            ))
            .status()
            .unwrap();
        assert!(status.success());
        let (conn, _) = listener.accept().unwrap();
        let _ = std::fs::remove_file(&dir);
        let err = peer_cgroup(&conn, boot_time_ns()).unwrap_err();
        assert!(err.contains("has exited"), "{err}");
    }
}
