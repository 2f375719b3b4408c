//! Shared support for the end-to-end tests: "remote" hosts in network namespaces, real peers inside
//! them, a gateway daemon per test, and cleanup that runs even when a test fails.
//!
//! Everything a test creates is named after a per-test unique id (network namespace, veth pair,
//! 10.x.y.0/24 subnet, listener port, bpffs pin directory, cgroups, temp directory), so tests run in
//! parallel, also next to other test runs on the same machine. Only processes the test started are
//! ended, by their pid.

use std::{
    fs,
    net::{Ipv4Addr, Ipv6Addr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

pub mod ssh;
use serde_json::Value;

pub mod oidc;
pub mod pg;

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

pub fn sshraw_bin() -> PathBuf {
    target_dir().join("e2e-sshraw")
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

/// A stopped daemon (see [`Daemon::freeze`]); continues when dropped.
pub struct Frozen<'a>(&'a Daemon);

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        self.0.signal(libc::SIGCONT);
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

/// A "remote host": a network namespace joined to the host by a veth pair on a 10.x.y.0/24 (and
/// fd00:e2e:x:y::/64) of its own. The host side is .1 / ::1, the namespace side .2 / ::2.
pub struct Netns {
    pub name: String,
    pub host_ip: Ipv4Addr,
    pub remote_ip: Ipv4Addr,
    pub host_ip6: Ipv6Addr,
    pub remote_ip6: Ipv6Addr,
    veth: String,
}

impl Netns {
    pub fn new(id: &str) -> Result<Netns> {
        let name = format!("gwe-{id}");
        let veth = format!("gv{id}");
        let (a, b) = free_subnet(id)?;
        let ns = Netns {
            name: name.clone(),
            host_ip: Ipv4Addr::new(10, a, b, 1),
            remote_ip: Ipv4Addr::new(10, a, b, 2),
            host_ip6: format!("fd00:e2e:{a:x}:{b:x}::1").parse()?,
            remote_ip6: format!("fd00:e2e:{a:x}:{b:x}::2").parse()?,
            veth: veth.clone(),
        };
        let ip = |args: &[&str]| run_ok(Command::new("ip").args(args));
        ip(&["netns", "add", &name])?;
        // From here on Drop cleans up whatever was created.
        let host_side = format!("{veth}h");
        let remote_side = format!("{veth}r");
        ip(&[
            "link",
            "add",
            &host_side,
            "type",
            "veth",
            "peer",
            "name",
            &remote_side,
        ])?;
        ip(&["link", "set", &remote_side, "netns", &name])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/24", ns.host_ip),
            "dev",
            &host_side,
        ])?;
        ip(&[
            "-6",
            "addr",
            "add",
            &format!("{}/64", ns.host_ip6),
            "dev",
            &host_side,
            "nodad",
        ])?;
        ip(&["link", "set", &host_side, "up"])?;
        ip(&[
            "-n",
            &name,
            "addr",
            "add",
            &format!("{}/24", ns.remote_ip),
            "dev",
            &remote_side,
        ])?;
        ip(&[
            "-n",
            &name,
            "-6",
            "addr",
            "add",
            &format!("{}/64", ns.remote_ip6),
            "dev",
            &remote_side,
            "nodad",
        ])?;
        ip(&["-n", &name, "link", "set", &remote_side, "up"])?;
        ip(&["-n", &name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A command that runs inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &format!("{}h", self.veth)])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Picks a 10.x.y.0/24 no interface of this machine uses (random, derived from the test id).
fn free_subnet(id: &str) -> Result<(u8, u8)> {
    let used = run_ok(Command::new("ip").args(["-o", "addr", "show"]))?;
    let seed = u32::from_str_radix(id, 16).unwrap_or(0);
    for i in 0..200u32 {
        let v = seed.wrapping_add(i.wrapping_mul(7919));
        let (a, b) = (64 + (v % 160) as u8, ((v >> 8) % 256) as u8);
        if !used.contains(&format!("inet 10.{a}.{b}.")) {
            return Ok((a, b));
        }
    }
    bail!("no free 10.x.y.0/24 subnet")
}

/// The e2e-echo server inside a namespace.
pub struct EchoServer {
    process: Process,
}

impl EchoServer {
    pub fn start(ns: &Netns, dir: &Path, addrs: &[String]) -> Result<EchoServer> {
        let mut cmd = ns.command(echo_bin());
        cmd.args(addrs);
        let process = Process::spawn(
            "echo",
            &mut cmd,
            dir.join(format!("echo-{}.log", unique_id())),
        )?;
        let server = EchoServer { process };
        let ready = wait_until(Duration::from_secs(10), || {
            server.process.output().matches("listening ").count() >= addrs.len()
        });
        ensure!(
            ready,
            "echo server did not start: {}",
            server.process.output()
        );
        Ok(server)
    }

    /// Peers of every connection accepted so far.
    pub fn accepted(&self) -> Vec<String> {
        self.logged("accepted ")
    }

    /// Peers of every connection that ended so far.
    pub fn closed(&self) -> Vec<String> {
        self.logged("closed ")
    }

    fn logged(&self, prefix: &str) -> Vec<String> {
        self.process
            .output()
            .lines()
            .filter_map(|l| l.strip_prefix(prefix))
            .map(str::to_string)
            .collect()
    }
}

/// What a test puts into the daemon's configuration.
#[derive(Default, Clone)]
pub struct DaemonConfig {
    /// Extra `key = value` lines of the `[server]` table (mode, dns_resolvers, …).
    pub server: String,
    /// Everything after `[server]`: targets, rules, ….
    pub body: String,
}

/// A `gateway serve` of the test's own: own listener port, control socket, state directory, bpffs pin
/// directory and job cgroup parent. Dropping it stops the daemon and removes every pinned object,
/// job cgroup and file it left.
pub struct Daemon {
    pub id: String,
    pub dir: TempDir,
    pub port: u16,
    pub config_path: PathBuf,
    pub control_socket: PathBuf,
    pub pin_dir: PathBuf,
    pub job_parent: String,
    pub cgroup_root: PathBuf,
    process: Option<Process>,
    starts: u32,
    /// Extra environment of the daemon process (e.g. NOTIFY_SOCKET).
    env: Vec<(String, String)>,
    /// A command the daemon is started through (e.g. `setpriv` with a capability set).
    wrapper: Vec<String>,
}

impl Daemon {
    pub fn start(config: DaemonConfig) -> Result<Daemon> {
        Self::start_with_env(config, &[])
    }

    /// [`Daemon::start`] at the daemon's own default log level, for benchmarks (the tests' debug
    /// logging would be measured too).
    pub fn start_at_default_log_level(config: DaemonConfig) -> Result<Daemon> {
        Self::start_with_env(config, &[("RUST_LOG", "info")])
    }

    pub fn start_with_env(config: DaemonConfig, env: &[(&str, &str)]) -> Result<Daemon> {
        Self::start_wrapped(config, env, &[])
    }

    /// Starts `wrapper… gateway --config F serve` with `env` added.
    pub fn start_wrapped(
        config: DaemonConfig,
        env: &[(&str, &str)],
        wrapper: &[&str],
    ) -> Result<Daemon> {
        require_root();
        let id = unique_id();
        let dir = TempDir::new(&format!("d{id}"));
        let port = free_port();
        let control_socket = dir.path().join("control.sock");
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/gwe-{id}"));
        let job_parent = format!("gwe-{id}-jobs");
        let config_path = dir.path().join("gateway.toml");
        let text = format!(
            "[server]\nlisten = [\"127.0.0.1:{port}\", \"[::1]:{port}\"]\ncontrol_socket = \"{}\"\nstate_dir = \"{}\"\nbpf_pin_dir = \"{}\"\njob_cgroup_parent = \"{job_parent}\"\nshutdown_grace = \"2s\"\n{}\n\n{}\n",
            control_socket.display(),
            dir.path().join("state").display(),
            pin_dir.display(),
            config.server,
            config.body,
        );
        fs::write(&config_path, text)?;
        let cgroup_root = cgroup2_root()?;
        let mut daemon = Daemon {
            id,
            dir,
            port,
            config_path,
            control_socket,
            pin_dir,
            job_parent,
            cgroup_root,
            process: None,
            starts: 0,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            wrapper: wrapper.iter().map(|s| s.to_string()).collect(),
        };
        daemon.spawn()?;
        Ok(daemon)
    }

    fn spawn(&mut self) -> Result<()> {
        self.starts += 1;
        let log = self.dir.path().join(format!("daemon-{}.log", self.starts));
        let mut cmd = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(gateway_bin());
                c
            }
            None => Command::new(gateway_bin()),
        };
        cmd.arg("--config")
            .arg(&self.config_path)
            .arg("serve")
            .env("RUST_LOG", "info,gateway=debug")
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        let mut process = Process::spawn("gateway", &mut cmd, log)?;
        let socket = self.control_socket.clone();
        let ready = wait_until(Duration::from_secs(20), || {
            !process.alive()
                || Command::new(gateway_bin())
                    .arg("--control-socket")
                    .arg(&socket)
                    .arg("status")
                    .output()
                    .is_ok_and(|o| o.status.success())
        });
        let alive = process.alive();
        let output = process.output();
        self.process = Some(process);
        ensure!(ready && alive, "gateway did not become ready:\n{output}");
        Ok(())
    }

    /// Everything the daemon logged (all starts).
    pub fn log(&self) -> String {
        (1..=self.starts)
            .map(|n| {
                fs::read_to_string(self.dir.path().join(format!("daemon-{n}.log")))
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n--- restart ---\n")
    }

    pub fn pid(&self) -> u32 {
        self.process.as_ref().map_or(0, Process::pid)
    }

    /// SIGSTOP: the daemon accepts nothing (the kernel still completes handshakes into the
    /// listener's backlog) until the returned guard is dropped (SIGCONT), also on failure.
    pub fn freeze(&self) -> Frozen<'_> {
        self.signal(libc::SIGSTOP);
        Frozen(self)
    }

    fn signal(&self, sig: i32) {
        if let Some(p) = &self.process {
            p.signal(sig);
        }
    }

    /// kill -9: no cleanup, pinned programs stay attached.
    pub fn kill9(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.stop(libc::SIGKILL, Duration::from_secs(5));
        }
    }

    /// SIGTERM and wait; returns the exit status.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        self.process
            .take()
            .and_then(|mut p| p.stop(libc::SIGTERM, Duration::from_secs(15)))
    }

    pub fn restart(&mut self) -> Result<()> {
        self.terminate();
        self.spawn()
    }

    /// Starts a daemon again after kill9/terminate.
    pub fn start_again(&mut self) -> Result<()> {
        ensure!(self.process.is_none(), "daemon still running");
        self.spawn()
    }

    /// Restarts the daemon with its state directory on a fresh tmpfs of `size` (a disk the test
    /// can fill).
    pub fn restart_on_small_disk(&mut self, size: &str) -> Result<Tmpfs> {
        self.terminate();
        let disk = Tmpfs::mount(&self.dir.path().join("state"), size)?;
        self.start_again()?;
        Ok(disk)
    }

    /// Runs the gateway CLI against this daemon.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(gateway_bin())
            .arg("--control-socket")
            .arg(&self.control_socket)
            .args(args)
            .output()
            .expect("run gateway cli")
    }

    pub fn cli_json(&self, args: &[&str]) -> Result<Value> {
        let out = self.cli(args);
        ensure!(
            out.status.success(),
            "gateway {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).with_context(|| format!("gateway {args:?}: not JSON"))
    }

    /// `gateway sessions show ID --json`: the session with its events.
    pub fn show_session(&self, id: impl std::fmt::Display) -> Result<Value> {
        self.cli_json(&["sessions", "show", &id.to_string(), "--json"])
    }

    pub fn sessions(&self) -> Result<Vec<Value>> {
        let v = self.cli_json(&["sessions", "list", "--json", "--limit", "10000"])?;
        Ok(v.as_array().cloned().unwrap_or_default())
    }

    /// `gateway run [run_args] -- program args…`.
    pub fn run_job(
        &self,
        run_args: &[&str],
        program: impl AsRef<std::ffi::OsStr>,
        args: &[&str],
    ) -> Output {
        let mut cmd = Command::new(gateway_bin());
        cmd.arg("--control-socket")
            .arg(&self.control_socket)
            .arg("run")
            .args(run_args)
            .arg("--")
            .arg(program)
            .args(args);
        cmd.output().expect("gateway run")
    }

    /// Runs e2e-probe as a job; returns its JSON verdict.
    pub fn probe_in_job(&self, args: &[&str]) -> Result<Value> {
        let out = self.run_job(&[], probe_bin(), args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(stdout.trim()).with_context(|| {
            format!(
                "probe {args:?}: {stdout} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    pub fn job_parent_path(&self) -> PathBuf {
        self.cgroup_root.join(&self.job_parent)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- gateway daemon log ({}) ---\n{}", self.id, self.log());
        }
        self.terminate();
        remove_cgroup_tree(&self.job_parent_path());
        // Pinned links and maps: unlinking the pins detaches and frees them.
        let _ = fs::remove_dir_all(&self.pin_dir);
    }
}

/// A cgroup the test creates itself (to `gateway attach` it, like a CI runner would).
pub struct TestCgroup {
    pub path: PathBuf,
}

impl TestCgroup {
    pub fn new(name: &str) -> Result<TestCgroup> {
        let path = cgroup2_root()?.join(format!("gwe-{name}-{}", unique_id()));
        fs::create_dir(&path).with_context(|| format!("mkdir {}", path.display()))?;
        Ok(TestCgroup { path })
    }

    /// Runs e2e-probe inside this cgroup.
    pub fn probe(&self, args: &[&str]) -> Result<Value> {
        let out = Command::new(probe_bin())
            .arg("--cgroup")
            .arg(&self.path)
            .args(args)
            .output()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(stdout.trim()).with_context(|| format!("probe {args:?}: {stdout}"))
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        remove_cgroup_tree(&self.path);
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

pub fn remove_cgroup_tree(path: &Path) {
    if !path.exists() {
        return;
    }
    let _ = fs::write(path.join("cgroup.kill"), "1");
    wait_until(Duration::from_secs(5), || {
        fs::read_to_string(path.join("cgroup.events")).map_or(true, |e| e.contains("populated 0"))
    });
    fn remove(p: &Path) {
        if let Ok(entries) = fs::read_dir(p) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    remove(&e.path());
                }
            }
        }
        let _ = fs::remove_dir(p);
    }
    remove(path);
}

/// The cgroup v2 mount point, from /proc/self/mountinfo.
pub fn cgroup2_root() -> Result<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo")?;
    text.lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            (right.split_whitespace().next()? == "cgroup2")
                .then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
        })
        .context("no cgroup2 mount")
}

/// PostgreSQL 15 inside a namespace, listening on the namespace's address, port 5432; role `app`
/// (password `apppw`, SCRAM) owning database `app`. Stopped on drop.
pub struct Postgres {
    data: PathBuf,
    ns_name: String,
    pub host: Ipv4Addr,
    pub port: u16,
}

pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

impl Postgres {
    pub fn start(ns: &Netns, dir: &Path) -> Result<Postgres> {
        Self::start_with(ns, dir, "")
    }

    /// Like [`Postgres::start`], with extra server options (`-c max_connections=1100`).
    pub fn start_with(ns: &Netns, dir: &Path, server_options: &str) -> Result<Postgres> {
        let data = dir.join("pgdata");
        fs::create_dir_all(&data)?;
        let pwfile = dir.join("pgpw");
        fs::write(&pwfile, "postgres-pw\n")?;
        run_ok(
            Command::new("chown")
                .arg("-R")
                .arg("postgres:postgres")
                .arg(&data)
                .arg(&pwfile),
        )?;
        let as_pg = |args: &[&str]| {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).args(args);
            c
        };
        run_ok(&mut as_pg(&[
            &format!("{PG_BIN}/initdb"),
            "-D",
            &data.display().to_string(),
            "-U",
            "postgres",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            &format!("--pwfile={}", pwfile.display()),
            "--no-sync",
            "-E",
            "UTF8",
        ]))?;
        let mut hba = fs::OpenOptions::new()
            .append(true)
            .open(data.join("pg_hba.conf"))?;
        use std::io::Write as _;
        writeln!(
            hba,
            "host all all 0.0.0.0/0 scram-sha-256\nhost all all ::/0 scram-sha-256"
        )?;
        let pg = Postgres {
            data: data.clone(),
            ns_name: ns.name.clone(),
            host: ns.remote_ip,
            port: 5432,
        };
        let opts = format!(
            "-p 5432 -k {} -c listen_addresses={} -c fsync=off {server_options}",
            data.display(),
            ns.remote_ip
        );
        let mut start = Command::new("ip");
        start
            .args(["netns", "exec", &ns.name, "runuser", "-u", "postgres", "--"])
            .args([
                &format!("{PG_BIN}/pg_ctl"),
                "-D",
                &data.display().to_string(),
                "-l",
                &data.join("server.log").display().to_string(),
                "-o",
                &opts,
                "-w",
                "start",
            ]);
        run_ok(&mut start)?;
        let sock = data.display().to_string();
        run_ok(&mut as_pg(&[
            "psql",
            "-h",
            &sock,
            "-p",
            "5432",
            "-U",
            "postgres",
            "-v",
            "ON_ERROR_STOP=1",
            "-q",
            "-c",
            "create role app login password 'apppw'",
            "-c",
            "create database app owner app",
        ]))?;
        Ok(pg)
    }

    /// Turns TLS on with a certificate for the server's address from a CA of the test's own
    /// (generated here with openssl); returns the CA's PEM file.
    pub fn enable_tls(&self, dir: &Path) -> Result<PathBuf> {
        let ca_key = dir.join("pg-ca.key");
        let ca = dir.join("pg-ca.pem");
        let key = self.data.join("server.key");
        let csr = dir.join("server.csr");
        let cert = self.data.join("server.crt");
        let ext = dir.join("server.ext");
        fs::write(&ext, format!("subjectAltName = IP:{}\n", self.host))?;
        let openssl = |args: &[&str]| run_ok(Command::new("openssl").args(args));
        let p = |p: &Path| p.display().to_string();
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &p(&ca_key),
            "-out",
            &p(&ca),
            "-days",
            "2",
            "-subj",
            "/CN=gateway e2e test CA",
        ])?;
        openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &p(&key),
            "-out",
            &p(&csr),
            "-subj",
            &format!("/CN={}", self.host),
        ])?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            &p(&csr),
            "-CA",
            &p(&ca),
            "-CAkey",
            &p(&ca_key),
            "-CAcreateserial",
            "-out",
            &p(&cert),
            "-days",
            "2",
            "-extfile",
            &p(&ext),
        ])?;
        run_ok(
            Command::new("chown")
                .arg("postgres:postgres")
                .arg(&key)
                .arg(&cert),
        )?;
        run_ok(Command::new("chmod").arg("600").arg(&key))?;
        self.admin_sql("ALTER SYSTEM SET ssl = on")?;
        self.admin_sql("select pg_reload_conf()")?;
        Ok(ca)
    }

    /// Puts an authentication line at the top of pg_hba.conf (first match wins) and reloads.
    pub fn prepend_hba(&self, line: &str) -> Result<()> {
        let path = self.data.join("pg_hba.conf");
        let old = fs::read_to_string(&path)?;
        fs::write(&path, format!("{line}\n{old}"))?;
        self.admin_sql("select pg_reload_conf()")?;
        Ok(())
    }

    /// Runs SQL as the superuser over the server's Unix socket (outside any job).
    pub fn admin_sql(&self, sql: &str) -> Result<String> {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", "psql", "-h"])
            .arg(&self.data)
            .args([
                "-p",
                "5432",
                "-U",
                "postgres",
                "-d",
                "app",
                "-AtX",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ]);
        run_ok(&mut c)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns_name,
                "runuser",
                "-u",
                "postgres",
                "--",
            ])
            .arg(format!("{PG_BIN}/pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "stop"])
            .output();
    }
}
