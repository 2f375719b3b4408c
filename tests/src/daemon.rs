//! A gateway daemon of the test's own.

use std::{fs, path::PathBuf, process::Command, time::Duration};

use anyhow::{Context as _, Result, ensure};
use serde_json::Value;

use crate::*;

/// A stopped daemon (see [`Daemon::freeze`]); continues when dropped.
pub struct Frozen<'a>(&'a Daemon);

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        self.0.signal(libc::SIGCONT);
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

/// How to start a [`Daemon`]: extra environment, a wrapper command, the log level.
pub struct DaemonBuilder {
    config: DaemonConfig,
    env: Vec<(String, String)>,
    wrapper: Vec<String>,
}

impl DaemonBuilder {
    /// Adds `key=value` to the daemon's environment (e.g. NOTIFY_SOCKET, RUST_LOG).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    pub fn envs(mut self, pairs: &[(&str, &str)]) -> Self {
        for (k, v) in pairs {
            self = self.env(k, v);
        }
        self
    }

    /// The daemon's own default log level, for benchmarks (the tests' debug logging would be
    /// measured too).
    pub fn default_log_level(self) -> Self {
        self.env("RUST_LOG", "info")
    }

    /// Starts `wrapper… gateway --config F serve` (e.g. `setpriv` with a capability set).
    pub fn wrapper(mut self, wrapper: &[&str]) -> Self {
        self.wrapper = wrapper.iter().map(|s| s.to_string()).collect();
        self
    }

    pub fn start(self) -> Result<Daemon> {
        Daemon::start_built(self)
    }
}

impl Daemon {
    pub fn start(config: DaemonConfig) -> Result<Daemon> {
        Self::builder(config).start()
    }

    pub fn builder(config: DaemonConfig) -> DaemonBuilder {
        DaemonBuilder {
            config,
            env: Vec::new(),
            wrapper: Vec::new(),
        }
    }

    fn start_built(b: DaemonBuilder) -> Result<Daemon> {
        let DaemonBuilder {
            config,
            env,
            wrapper,
        } = b;
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
            env,
            wrapper,
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

    /// `gateway targets ca` with the daemon's configuration: the CA jobs trust for TLS the
    /// gateway terminates.
    pub fn ca_pem(&self) -> Result<String> {
        let out = Command::new(gateway_bin())
            .arg("--config")
            .arg(&self.config_path)
            .args(["targets", "ca"])
            .output()?;
        ensure!(
            out.status.success(),
            "gateway targets ca: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?)
    }

    /// `gateway sessions show ID --json`: the session with its events.
    pub fn show_session(&self, id: impl std::fmt::Display) -> Result<Value> {
        self.cli_json(&["sessions", "show", &id.to_string(), "--json"])
    }

    /// The first approval request still pending, if any.
    pub fn pending_approval(&self) -> Option<Value> {
        let list = self.cli_json(&["approvals", "list", "--json"]).ok()?;
        list.as_array()?
            .iter()
            .find(|a| a["status"] == "pending")
            .cloned()
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
