//! Shared support for the end-to-end tests: "remote" hosts in network namespaces, real peers inside
//! them, a gateway daemon per test, and cleanup that runs even when a test fails.
//!
//! Everything a test creates is named after a per-test unique id (network namespace, veth pair,
//! 10.x.y.0/24 subnet, listener port, bpffs pin directory, cgroups, temp directory), so tests run in
//! parallel, also next to other test runs on the same machine. Only processes the test started are
//! ended, by their pid.

use std::{
    fs,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};

mod cgroup;
mod daemon;
pub mod http;
mod netns;
pub mod oidc;
pub mod pg;
pub mod pki;
mod postgres;
pub mod ssh;

pub use cgroup::{TestCgroup, cgroup2_root, remove_cgroup_tree};
pub use daemon::{Daemon, DaemonBuilder, DaemonConfig, Frozen};
pub use netns::{EchoServer, Netns, free_subnet};
pub use postgres::{PG_BIN, Postgres};

/// The tests attach eBPF programs, create namespaces and cgroups: they need root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the end-to-end tests need root (they load eBPF programs)"
    );
}

/// A short id unique to this test within this machine (pid, counter and clock).
pub fn unique_id() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    let mixed = (std::process::id().wrapping_mul(2_654_435_761) ^ nanos ^ n.wrapping_mul(40_503))
        & 0xff_ffff;
    format!("{mixed:06x}")
}

/// Directory of the binaries built with the test (target/<profile>/): $E2E_BIN_DIR, else from the
/// test executable's path.
fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("E2E_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> → target/<profile>
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

/// The `gateway` binary under test: $GATEWAY_BIN, else the one built next to the tests.
pub fn gateway_bin() -> PathBuf {
    std::env::var_os("GATEWAY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("gateway"))
}

pub fn probe_bin() -> PathBuf {
    target_dir().join("e2e-probe")
}

pub fn pgwire_bin() -> PathBuf {
    target_dir().join("e2e-pgwire")
}

pub fn bench_bin() -> PathBuf {
    target_dir().join("e2e-bench")
}

pub fn echo_bin() -> PathBuf {
    target_dir().join("e2e-echo")
}

pub fn httpraw_bin() -> PathBuf {
    target_dir().join("e2e-httpraw")
}

pub fn dns_bin() -> PathBuf {
    target_dir().join("e2e-dns")
}

pub fn sshraw_bin() -> PathBuf {
    target_dir().join("e2e-sshraw")
}

pub fn ws2_bin() -> PathBuf {
    target_dir().join("e2e-ws2")
}

pub fn relay_bin() -> PathBuf {
    target_dir().join("e2e-relay")
}

pub fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    Ok(out)
}

pub fn run_ok(cmd: &mut Command) -> Result<String> {
    let out = run(cmd)?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Polls `check` every 50 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    check()
}

/// A free TCP port on both 127.0.0.1 and [::1] (checked, then released).
pub fn free_port() -> u16 {
    for _ in 0..50 {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        if TcpListener::bind(("::1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port");
}

/// A child process ended on drop (by its pid), with its output in a log file.
pub struct Process {
    child: Option<Child>,
    pub log: PathBuf,
    pub name: String,
}

impl Process {
    pub fn spawn(name: &str, cmd: &mut Command, log: PathBuf) -> Result<Process> {
        let file = fs::File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("spawn {cmd:?}"))?;
        Ok(Process {
            child: Some(child),
            log,
            name: name.to_string(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn output(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) on the pid of a child we own and have not reaped.
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }

    /// Sends `sig`, waits up to `timeout`, then SIGKILL. Returns the exit status.
    pub fn stop(&mut self, sig: i32, timeout: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: as above.
        unsafe { libc::kill(child.id() as i32, sig) };
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if start.elapsed() > timeout {
                let _ = child.kill();
                return child.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop(libc::SIGKILL, Duration::from_secs(5));
    }
}

/// A per-test scratch directory under /tmp, removed on drop (kept with E2E_KEEP=1).
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(id: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("gwe-{id}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("E2E_KEEP").is_none() {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

/// Kills what is left in a cgroup subtree and removes it, deepest first.
/// A tmpfs of `size` mounted over a directory for one test (a small disk to fill); unmounted
/// lazily when dropped, so files a process still holds open do not keep it mounted.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    pub fn mount(path: &Path, size: &str) -> Result<Tmpfs> {
        fs::create_dir_all(path)?;
        run_ok(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o"])
                .arg(format!("size={size},mode=0700"))
                .arg("tmpfs")
                .arg(path),
        )?;
        Ok(Tmpfs(path.to_path_buf()))
    }

    /// Writes a filler file until the file system is full (bounded by its size).
    pub fn fill(&self) -> Result<()> {
        use std::io::Write as _;
        let mut f = fs::File::create(self.0.join(FILLER))?;
        // Large writes first, then ever smaller ones: the last pages fill up too.
        for chunk in [1 << 20, 64 << 10, 4 << 10, 512, 64, 1] {
            let bytes = vec![0u8; chunk];
            for _ in 0..4096 {
                if f.write_all(&bytes).is_err() {
                    break;
                }
            }
        }
        let probe = f.write_all(&[0]);
        ensure!(probe.is_err(), "{} is not full", self.0.display());
        Ok(())
    }

    /// Removes what [`Tmpfs::fill`] wrote.
    pub fn free(&self) -> Result<()> {
        Ok(fs::remove_file(self.0.join(FILLER))?)
    }
}

const FILLER: &str = "filler";

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}
