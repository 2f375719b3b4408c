//! What /proc says about processes: start times, programs, command lines, parents, and the
//! process on the other end of a Unix socket. Every reader here is bounded, and none trusts a pid
//! beyond the moment it was checked (start times and pidfds tell a reused pid apart).

use std::{
    fs,
    os::fd::{AsFd, AsRawFd as _, BorrowedFd},
};

use serde::{Deserialize, Serialize};

/// One process of a connecting process's ancestry (its parent, theirs, …).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ancestor {
    pub pid: u32,
    pub comm: String,
    pub exe: Option<String>,
    pub cmdline: Option<Vec<String>>,
    #[serde(default)]
    pub cmdline_cut: bool,
}

/// A command line as stored: the arguments, and whether they were cut at [`CMDLINE_MAX`] bytes.
pub type Cmdline = (Vec<String>, bool);

/// Bytes of /proc/PID/cmdline kept per session (and per cache entry): a job chooses its
/// arguments, and megabytes of them in every session row would be its to spend.
pub const CMDLINE_MAX: usize = 4096;

/// The first [`CMDLINE_MAX`] bytes of the command line, and whether there was more.
pub fn cmdline_of(pid: u32) -> Option<Cmdline> {
    use std::io::Read as _;
    let file = fs::File::open(format!("/proc/{pid}/cmdline")).ok()?;
    let mut raw = Vec::with_capacity(CMDLINE_MAX + 1);
    file.take(CMDLINE_MAX as u64 + 1)
        .read_to_end(&mut raw)
        .ok()?;
    let cut = raw.len() > CMDLINE_MAX;
    raw.truncate(CMDLINE_MAX);
    Some((split_args(&raw), cut))
}

fn split_args(raw: &[u8]) -> Vec<String> {
    raw.split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

pub fn exe_of(pid: u32) -> Option<String> {
    fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .map(|e| e.display().to_string())
}

/// Start time of a process in nanoseconds since boot (field 22 of /proc/PID/stat, in clock ticks).
pub fn start_time_ns(pid: u32) -> Option<u64> {
    stat_of(pid).map(|s| s.start_ns)
}

/// What /proc/PID/stat says about a process that matters here.
struct Stat {
    comm: String,
    ppid: u32,
    start_ns: u64,
}

fn stat_of(pid: u32) -> Option<Stat> {
    use std::io::Read as _;
    // One read() (it runs for every accepted connection): the file is generated whole on the
    // first read and is far shorter than the buffer. `read_to_string` would add a statx and
    // several growing reads.
    let mut buf = [0u8; 2048];
    let n = fs::File::open(format!("/proc/{pid}/stat"))
        .ok()?
        .read(&mut buf)
        .ok()?;
    let stat = buf.get(..n).filter(|_| n < buf.len())?;
    // The command name (field 2) may contain spaces, parentheses and bytes that are not UTF-8:
    // skip past the last ')'.
    let open = stat.iter().position(|&b| b == b'(')?;
    let close = stat.iter().rposition(|&b| b == b')')?;
    let comm = String::from_utf8_lossy(stat.get(open + 1..close)?).into_owned();
    let after_comm = std::str::from_utf8(&stat[close + 1..]).ok()?;
    // Fields from 3 on: ppid is field 4 (index 1), starttime field 22 (index 19), in clock ticks.
    let fields: Vec<&str> = after_comm.split_whitespace().take(20).collect();
    let ppid = fields.get(1)?.parse().ok()?;
    let ticks: u64 = fields.get(19)?.parse().ok()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()? as u64;
    Some(Stat {
        comm,
        ppid,
        start_ns: ticks.saturating_mul(1_000_000_000 / hz.max(1)),
    })
}

/// Ancestors kept at most (the nearest).
pub const ANCESTRY_MAX: usize = 32;

/// The ancestors of process `pid` that run in the cgroup `scope` or below it (a path relative to
/// the cgroup v2 root: the job's), the farthest first: the chain from the job's first process (or
/// a container's) down to `pid`'s parent, as /proc shows it now. The walk stops at the first
/// ancestor outside the scope, at one that started after its child (the parent exited and its
/// pid was reused), and after [`ANCESTRY_MAX`].
pub fn ancestry(pid: u32, scope: &str) -> Vec<Ancestor> {
    let scope = scope.trim_end_matches('/');
    let inside = |pid: u32| {
        crate::cgroup::process_cgroup(pid).is_some_and(|c| {
            c == scope
                || c.strip_prefix(scope)
                    .is_some_and(|rest| rest.starts_with('/'))
        })
    };
    let mut chain = Vec::new();
    let Some(mut child) = stat_of(pid) else {
        return chain;
    };
    while chain.len() < ANCESTRY_MAX && child.ppid > 1 {
        let ppid = child.ppid;
        let Some(parent) = stat_of(ppid) else { break };
        if parent.start_ns > child.start_ns || !inside(ppid) {
            break;
        }
        let exe = exe_of(ppid);
        let cmdline = cmdline_of(ppid);
        // Read after everything else: still the process that was checked.
        if start_time_ns(ppid) != Some(parent.start_ns) {
            break;
        }
        let (cmdline, cmdline_cut) = match cmdline {
            Some((args, cut)) => (Some(args), cut),
            None => (None, false),
        };
        chain.push(Ancestor {
            pid: ppid,
            comm: parent.comm.clone(),
            exe,
            cmdline,
            cmdline_cut,
        });
        child = parent;
    }
    chain.reverse();
    chain
}

/// The process on the other end of a Unix socket, as it was while it was read.
#[derive(Debug, Clone)]
pub struct Peer {
    pub pid: u32,
    /// Credentials when it connected (SO_PEERCRED).
    pub uid: u32,
    pub gid: u32,
    /// Its groups (primary and supplementary), from /proc.
    pub groups: Vec<u32>,
    /// Its cgroup v2 path, relative to the hierarchy's root.
    pub cgroup: String,
    pub comm: String,
    pub exe: Option<String>,
    pub cmdline: Option<Cmdline>,
}

/// The process that connected to `socket` (SO_PEERPIDFD, Linux 6.5): what /proc says about it,
/// read while the pidfd says the process had not exited (so its pid was still its own).
pub fn peer(socket: &impl AsFd) -> Result<Peer, String> {
    use nix::sys::socket::{getsockopt, sockopt};
    let fd = socket.as_fd();
    let pidfd = getsockopt(&fd, sockopt::PeerPidfd).map_err(|e| {
        format!("cannot identify the process that connected (SO_PEERPIDFD, Linux 6.5+): {e}")
    })?;
    let cred = getsockopt(&fd, sockopt::PeerCredentials)
        .map_err(|e| format!("cannot read the peer's credentials: {e}"))?;
    const EXITED: &str = "the process that connected has exited";
    let pid = pid_of_pidfd(pidfd.as_fd()).ok_or(EXITED)?;
    let cgroup = crate::cgroup::process_cgroup(pid).ok_or(EXITED)?;
    let comm = fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim_end().to_string())
        .unwrap_or_default();
    let exe = exe_of(pid);
    let cmdline = cmdline_of(pid);
    let groups = groups_of(pid);
    if exited(pidfd.as_fd()) {
        return Err(EXITED.into());
    }
    Ok(Peer {
        pid,
        uid: cred.uid(),
        gid: cred.gid(),
        groups,
        cgroup,
        comm,
        exe,
        cmdline,
    })
}

/// The pid a pidfd refers to in our pid namespace (its fdinfo), `None` once it was reaped.
fn pid_of_pidfd(pidfd: BorrowedFd<'_>) -> Option<u32> {
    let info = fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd())).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .and_then(|p| p.trim().parse::<i64>().ok())
        .filter(|p| *p > 0)
        .and_then(|p| u32::try_from(p).ok())
}

/// A pidfd polls readable once its process has exited.
fn exited(pidfd: BorrowedFd<'_>) -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut fds = [PollFd::new(pidfd, PollFlags::POLLIN)];
    !matches!(poll(&mut fds, PollTimeout::ZERO), Ok(0))
}

/// The groups of a process (`Groups:` and the real `Gid:` of /proc/PID/status).
fn groups_of(pid: u32) -> Vec<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let mut groups: Vec<u32> = Vec::new();
    for line in status.lines() {
        if let Some(g) = line.strip_prefix("Groups:") {
            groups.extend(g.split_whitespace().filter_map(|n| n.parse::<u32>().ok()));
        } else if let Some(g) = line.strip_prefix("Gid:") {
            groups.extend(
                g.split_whitespace()
                    .next()
                    .and_then(|n| n.parse::<u32>().ok()),
            );
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_command_line_is_cut_and_says_so() {
        // A process of our own with one argument far over the cap (a number sleep accepts: 0).
        let long = "0".repeat(3 * CMDLINE_MAX);
        let mut child = std::process::Command::new("sleep")
            .args(["10", &long])
            .spawn()
            .unwrap();
        // Until the child has exec'd (before, /proc shows this test's command line).
        let mut read = None;
        for _ in 0..500 {
            read = cmdline_of(child.id());
            if read
                .as_ref()
                .is_some_and(|(args, _)| args.first().is_some_and(|a| a == "sleep"))
            {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        let (args, cut) = read.unwrap();
        assert!(cut);
        assert_eq!(args[0], "sleep");
        assert_eq!(args.join("\0").len(), CMDLINE_MAX);
        // One that fits is whole.
        let (args, cut) = cmdline_of(std::process::id()).unwrap();
        assert!(!cut && !args.is_empty());
    }

    #[test]
    fn ancestry_stops_at_the_scope_and_runs_farthest_first() {
        // sh → sleep, both in this test's own cgroup: the chain of sleep is this test process's
        // ancestors in that cgroup, then sh.
        let scope = crate::cgroup::process_cgroup(std::process::id()).unwrap();
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 10; true"])
            .spawn()
            .unwrap();
        let sh = child.id();
        let mut sleep = None;
        for _ in 0..500 {
            sleep = fs::read_to_string(format!("/proc/{sh}/task/{sh}/children"))
                .ok()
                .and_then(|c| c.split_whitespace().next()?.parse::<u32>().ok());
            if sleep.is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let chain = ancestry(sleep.unwrap(), &scope);
        let outside = ancestry(sleep.unwrap(), "/no/such/cgroup");
        let _ = child.kill();
        let _ = child.wait();
        let last = chain.last().unwrap();
        assert_eq!((last.pid, last.comm.as_str()), (sh, "sh"));
        assert_eq!(
            last.cmdline.as_deref(),
            Some(&["sh".to_string(), "-c".into(), "sleep 10; true".into()][..])
        );
        let me = chain
            .iter()
            .position(|a| a.pid == std::process::id())
            .unwrap();
        assert_eq!(me, chain.len() - 2, "the test process is sh's parent");
        assert!(outside.is_empty());
    }

    #[test]
    fn the_peer_of_a_socket_is_this_process() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let p = peer(&a).unwrap();
        assert_eq!(p.pid, std::process::id());
        assert_eq!(
            Some(p.cgroup),
            crate::cgroup::process_cgroup(std::process::id())
        );
        assert!(p.groups.contains(&p.gid));
        assert_eq!(p.exe, exe_of(std::process::id()));
    }
}
