//! Docker from inside a job, against a real Docker Engine: the job's `docker` reaches the gateway
//! at the engine's socket path, containers it creates get the job's cgroup as their parent, what
//! would leave the job's control is refused with the engine's error format and recorded.
//!
//! Each test uses the machine's dockerd if one answers at /var/run/docker.sock, otherwise starts
//! its own (own data root, exec root and socket in the test's directory; no bridge, no iptables)
//! and stops only that one. The image is built here from a few host binaries (`docker import`),
//! no registry.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};
use gateway_e2e::{
    Daemon, DaemonConfig, Process, TempDir, remove_cgroup_tree, unique_id, wait_until,
};
use serde_json::Value;

const SYSTEM_ENGINE: &str = "/var/run/docker.sock";

/// A Docker Engine for one test, with the test image imported.
struct Engine {
    socket: PathBuf,
    image: String,
    /// The dockerd this test started (`None`: the machine's).
    _dockerd: Option<Process>,
    dir: TempDir,
}

fn docker_ok(socket: &Path) -> bool {
    Command::new("docker")
        .arg("-H")
        .arg(format!("unix://{}", socket.display()))
        .args(["version", "--format", "{{.Server.APIVersion}}"])
        .output()
        .is_ok_and(|o| o.status.success())
}

impl Engine {
    /// `Ok(None)`: no engine can run on this machine (the reason is printed).
    fn start() -> Result<Option<Engine>> {
        let id = unique_id();
        let dir = TempDir::new(&format!("k{id}"));
        let (socket, dockerd) = if docker_ok(Path::new(SYSTEM_ENGINE)) {
            (PathBuf::from(SYSTEM_ENGINE), None)
        } else {
            let Ok(dockerd_bin) = which("dockerd") else {
                eprintln!("SKIPPED: dockerd is not installed (apt-get install docker.io)");
                return Ok(None);
            };
            let socket = dir.path().join("engine.sock");
            let process = Process::spawn(
                "dockerd",
                Command::new(dockerd_bin)
                    .arg("--data-root")
                    .arg(dir.path().join("data"))
                    .arg("--exec-root")
                    .arg(dir.path().join("exec"))
                    .arg("--pidfile")
                    .arg(dir.path().join("dockerd.pid"))
                    .arg("-H")
                    .arg(format!("unix://{}", socket.display()))
                    .args([
                        "--iptables=false",
                        "--ip6tables=false",
                        "--bridge=none",
                        "--storage-driver=vfs",
                    ]),
                dir.path().join("dockerd.log"),
            )?;
            let mut process = process;
            let up = wait_until(Duration::from_secs(60), || {
                !process.alive() || docker_ok(&socket)
            });
            if !(up && process.alive()) {
                eprintln!(
                    "SKIPPED: dockerd cannot start on this machine:\n{}",
                    process.output()
                );
                return Ok(None);
            }
            (socket, Some(process))
        };
        let engine = Engine {
            socket,
            image: format!("gwe-{id}:latest"),
            _dockerd: dockerd,
            dir,
        };
        engine.import_image()?;
        Ok(Some(engine))
    }

    /// A root file system of a few host programs and their libraries, imported as an image.
    fn import_image(&self) -> Result<()> {
        let root = self.dir.path().join("rootfs");
        for program in ["/bin/sh", "/bin/cat", "/bin/sleep", "/bin/true"] {
            let mut files = vec![PathBuf::from(program)];
            let ldd = Command::new("ldd").arg(program).output()?;
            files.extend(
                String::from_utf8_lossy(&ldd.stdout)
                    .split_whitespace()
                    .filter(|w| w.starts_with('/'))
                    .map(PathBuf::from),
            );
            for f in files {
                let to = root.join(f.strip_prefix("/")?);
                std::fs::create_dir_all(to.parent().context("no parent")?)?;
                std::fs::copy(&f, &to).with_context(|| format!("copy {}", f.display()))?;
            }
        }
        let tar = self.dir.path().join("rootfs.tar");
        let out = Command::new("tar")
            .arg("-C")
            .arg(&root)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .output()?;
        ensure!(out.status.success(), "tar: {out:?}");
        let out = self.docker(&["import", &tar.display().to_string(), &self.image]);
        ensure!(out.status.success(), "docker import: {out:?}");
        Ok(())
    }

    /// `docker` straight to the engine (as the host, not a job).
    fn docker(&self, args: &[&str]) -> Output {
        Command::new("docker")
            .arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .args(args)
            .output()
            .expect("run docker")
    }

    /// Ids of the containers (running or not) created from the test image.
    fn containers(&self) -> Vec<String> {
        let out = self.docker(&[
            "ps",
            "-aq",
            "--no-trunc",
            "--filter",
            &format!("ancestor={}", self.image),
        ]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // What the test made on the engine (containers of its image, the image).
        for id in self.containers() {
            let _ = self.docker(&["rm", "-f", &id]);
        }
        let _ = self.docker(&["rmi", "-f", &self.image]);
        if let Some(mut d) = self._dockerd.take() {
            d.stop(libc::SIGTERM, Duration::from_secs(20));
        }
    }
}

fn which(program: &str) -> Result<PathBuf> {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()?;
    ensure!(out.status.success(), "{program} not found");
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// A gateway serving the Docker API for jobs, in front of `engine`.
struct Setup {
    daemon: Daemon,
    engine: Engine,
}

impl Setup {
    fn new(rules: &str) -> Result<Option<Setup>> {
        let Some(engine) = Engine::start()? else {
            return Ok(None);
        };
        let listen = engine.dir.path().join("gateway-docker.sock");
        let body = format!(
            "[docker]\nengine = \"{}\"\nlisten = \"{}\"\n\n{rules}\n",
            engine.socket.display(),
            listen.display()
        );
        let daemon = Daemon::start(DaemonConfig {
            server: String::new(),
            body,
        })?;
        Ok(Some(Setup { daemon, engine }))
    }

    /// `gateway run -- docker -H unix://<engine's socket> ARGS` (the job's client uses the
    /// engine's own path: the gateway must be what answers there).
    fn docker_in_job(&self, args: &[&str]) -> Output {
        self.docker_in_job_with(&[], args)
    }

    /// [`Setup::docker_in_job`] with `gateway run` arguments (`--user`).
    fn docker_in_job_with(&self, run_args: &[&str], args: &[&str]) -> Output {
        let host = format!("unix://{}", self.engine.socket.display());
        let mut all = vec!["-H", host.as_str()];
        all.extend_from_slice(args);
        self.daemon.run_job(run_args, "docker", &all)
    }

    /// The `docker_request` events of every Docker session.
    fn docker_requests(&self) -> Result<Vec<Value>> {
        let mut events = Vec::new();
        for s in self.daemon.sessions()? {
            if s["protocol"] != "docker" {
                continue;
            }
            let shown = self.daemon.show_session(&s["id"])?;
            events.extend(
                shown["events"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|e| e["kind"] == "docker_request")
                    .map(|e| e["detail"].clone()),
            );
        }
        Ok(events)
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- dockerd log ---\n{}",
                std::fs::read_to_string(self.engine.dir.path().join("dockerd.log"))
                    .unwrap_or_default()
            );
        }
        // Containers first (their cgroups are below the job's), then what the engine's cgroup v1
        // controllers made for the job's path on a hybrid hierarchy.
        for id in self.engine.containers() {
            let _ = self.engine.docker(&["rm", "-f", &id]);
        }
        if let Ok(dirs) = std::fs::read_dir("/sys/fs/cgroup") {
            for d in dirs.flatten() {
                let p = d.path().join(&self.daemon.job_parent);
                if p != self.daemon.job_parent_path() {
                    remove_cgroup_tree(&p);
                }
            }
        }
    }
}

const ALLOW_DOCKER: &str = r#"
[[rules]]
name = "docker"
action = "allow"
unauthenticated = true
docker = {}
"#;

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn docker_run_in_a_job_runs_in_the_jobs_cgroup_and_is_recorded() -> Result<()> {
    let Some(s) = Setup::new(ALLOW_DOCKER)? else {
        return Ok(());
    };
    let name = format!("gwe-{}", unique_id());
    let out = s.docker_in_job(&[
        "run",
        "--name",
        &name,
        &s.engine.image,
        "/bin/cat",
        "/proc/self/cgroup",
    ]);
    assert!(out.status.success(), "{}\n{}", text(&out), s.daemon.log());
    // The container's cgroup (v2 line) is below the job's cgroup, under the job parent.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v2 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .with_context(|| format!("no cgroup v2 line: {stdout}"))?;
    let prefix = format!("/{}/job-", s.daemon.job_parent);
    assert!(v2.starts_with(&prefix), "container cgroup {v2:?}");
    // The job has ended: what it created in the engine is gone with it (nothing of it runs on,
    // or restarts, outside the job).
    let inspect = s.engine.docker(&["inspect", &name]);
    assert!(!inspect.status.success(), "{}", text(&inspect));

    // Recorded: the create with image and command, allowed.
    let requests = s.docker_requests()?;
    let create = requests
        .iter()
        .find(|r| r["operation"] == "container_create")
        .with_context(|| format!("no create recorded: {requests:?}"))?;
    assert_eq!(create["image"], s.engine.image.as_str(), "{create}");
    assert_eq!(create["decision"], "allow", "{create}");
    assert_eq!(
        create["command"],
        serde_json::json!(["/bin/cat", "/proc/self/cgroup"]),
        "{create}"
    );
    let session = s
        .daemon
        .sessions()?
        .into_iter()
        .find(|x| x["protocol"] == "docker")
        .context("no docker session")?;
    assert!(session["job_id"].is_string(), "{session}");
    Ok(())
}

/// Who ran what: a Docker session records the chain from the job's first process (a shell) to
/// the `docker` client, and `sessions show` prints it.
#[test]
fn a_docker_session_records_the_process_chain_from_the_jobs_first_process() -> Result<()> {
    let Some(s) = Setup::new(ALLOW_DOCKER)? else {
        return Ok(());
    };
    let script = format!(
        "docker -H unix://{} ps -q >/dev/null && echo done",
        s.engine.socket.display()
    );
    let out = s.daemon.run_job(&[], "/bin/sh", &["-c", &script]);
    assert!(out.status.success(), "{}", text(&out));
    let session = s
        .daemon
        .sessions()?
        .into_iter()
        .find(|x| x["protocol"] == "docker")
        .context("no docker session")?;
    let shown = s.daemon.show_session(&session["id"])?;
    let process = &shown["process"];
    assert_eq!(process["comm"], "docker", "{shown}");
    let ancestry = process["ancestry"]
        .as_array()
        .with_context(|| format!("no ancestry: {shown}"))?;
    assert_eq!(ancestry.len(), 1, "{shown}");
    assert_eq!(ancestry[0]["comm"], "sh", "{shown}");
    assert_eq!(ancestry[0]["cmdline"][1], "-c", "{shown}");
    let human = s
        .daemon
        .cli(&["sessions", "show", &session["id"].to_string()]);
    let human = String::from_utf8_lossy(&human.stdout);
    assert!(
        human.contains("ran by") && human.contains("sh -c") && human.contains("→"),
        "{human}"
    );
    Ok(())
}

/// Each request that would leave the job's control: refused with the engine's error format (so
/// `docker` prints it), recorded as denied, nothing created on the engine. Each is first shown to
/// work against the engine directly (the attack is real).
#[test]
fn escapes_through_docker_are_refused_and_recorded() -> Result<()> {
    let Some(s) = Setup::new(ALLOW_DOCKER)? else {
        return Ok(());
    };
    let engine_socket = s.engine.socket.display().to_string();
    let sock_bind = format!("{engine_socket}:/var/run/docker.sock");
    let image = s.engine.image.clone();
    let attacks: Vec<(&str, Vec<&str>)> = vec![
        ("privileged", vec!["--privileged"]),
        ("host network", vec!["--network", "host"]),
        ("host pid", vec!["--pid", "host"]),
        ("host ipc", vec!["--ipc", "host"]),
        ("host cgroupns", vec!["--cgroupns", "host"]),
        ("cap SYS_ADMIN", vec!["--cap-add", "SYS_ADMIN"]),
        ("device", vec!["--device", "/dev/null:/dev/xnull"]),
        ("docker socket", vec!["-v", &sock_bind]),
        ("host root", vec!["-v", "/:/host"]),
        ("proc", vec!["-v", "/proc:/hostproc"]),
        ("sys", vec!["-v", "/sys:/hostsys"]),
        ("cgroupfs", vec!["-v", "/sys/fs/cgroup:/cg"]),
        ("bpffs", vec!["-v", "/sys/fs/bpf:/bpf"]),
        (
            "docker socket, mount syntax",
            vec!["--mount", "type=bind,source=/var/run,target=/r"],
        ),
        ("foreign cgroup parent", vec!["--cgroup-parent", "/"]),
    ];
    for (what, flags) in &attacks {
        let mut args = vec!["create"];
        args.extend(flags.iter().copied());
        args.extend([image.as_str(), "/bin/true"]);
        let before = s.engine.containers().len();
        let out = s.docker_in_job(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: not refused\n{}", text(&out));
        assert!(
            err.contains("Error response from daemon: gateway:"),
            "{what}: not the gateway's refusal\n{}",
            text(&out)
        );
        assert_eq!(
            s.engine.containers().len(),
            before,
            "{what}: a container was created"
        );
        // The attack is real: the engine itself accepts it.
        if *what != "foreign cgroup parent" {
            let direct = s.engine.docker(&args);
            assert!(direct.status.success(), "{what} direct: {}", text(&direct));
        }
    }
    let requests = s.docker_requests()?;
    let denied: Vec<&Value> = requests
        .iter()
        .filter(|r| r["operation"] == "container_create" && r["decision"] == "deny")
        .collect();
    assert_eq!(denied.len(), attacks.len(), "{requests:#?}");
    for d in &denied {
        assert_eq!(d["image"], image.as_str(), "{d}");
        assert!(d["reason"].is_string(), "{d}");
    }
    // The bind mounts are recorded as asked.
    assert!(
        denied
            .iter()
            .any(|d| d["mounts"].to_string().contains("/sys/fs/bpf")),
        "{denied:#?}"
    );
    Ok(())
}

/// Without a rule for Docker, a job may not use it at all; the reason names the identity.
#[test]
fn docker_without_a_rule_is_refused() -> Result<()> {
    let Some(s) = Setup::new("")? else {
        return Ok(());
    };
    let out = s.docker_in_job(&["create", &s.engine.image, "/bin/true"]);
    assert!(!out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("gateway: no rule allows"), "{}", text(&out));
    assert!(s.engine.containers().is_empty());
    Ok(())
}

/// A process in no job that finds the gateway's socket is refused (403) and the attempt
/// recorded; `gateway status` says how jobs' Docker clients reach the gateway.
#[test]
fn the_gateway_socket_serves_only_jobs_and_status_says_how_docker_is_covered() -> Result<()> {
    let Some(s) = Setup::new(ALLOW_DOCKER)? else {
        return Ok(());
    };
    let listen = s.engine.dir.path().join("gateway-docker.sock");
    let out = Command::new("docker")
        .arg("-H")
        .arg(format!("unix://{}", listen.display()))
        .args(["create", &s.engine.image, "/bin/true"])
        .output()?;
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not in a job of the gateway"),
        "{}",
        text(&out)
    );
    let anomalies: Vec<Value> = s
        .daemon
        .sessions()?
        .into_iter()
        .filter(|x| x["protocol"] == "docker" && x["decision"] == "deny")
        .collect();
    assert!(!anomalies.is_empty());

    let status = s.daemon.cli_json(&["status", "--json"])?;
    let docker = &status["containers"]["docker"];
    assert_eq!(
        docker["engine"],
        s.engine.socket.display().to_string(),
        "{status}"
    );
    let mechanisms = docker["interception"].to_string();
    assert!(mechanisms.contains("mount namespace"), "{mechanisms}");
    let human = s.daemon.cli(&["status"]);
    assert!(
        String::from_utf8_lossy(&human.stdout).contains("docker"),
        "{human:?}"
    );
    Ok(())
}

/// An unprivileged job user (a root job may replace any path on the way with a link before the
/// engine mounts it, so its bind mounts are refused whatever the rules say).
const NOBODY: &[&str] = &["--user", "nobody"];

/// A rule may allow bind mounts of host paths, but never of what would hand the job the host: the
/// engine's socket (also through a symbolic link or a parent directory), `/`, `/proc`, the cgroup
/// and bpf file systems. An ordinary directory it names works.
#[test]
fn protected_paths_stay_refused_when_a_rule_allows_binds() -> Result<()> {
    let Some(s) = Setup::new(
        r#"
[[rules]]
name = "binds"
action = "allow"
unauthenticated = true
docker = { bind_sources = ["/*"] }
"#,
    )?
    else {
        return Ok(());
    };
    let image = s.engine.image.clone();
    let engine_socket = s.engine.socket.display().to_string();
    let engine_dir = s
        .engine
        .socket
        .parent()
        .context("no parent")?
        .display()
        .to_string();
    let link = s.engine.dir.path().join("innocent");
    std::os::unix::fs::symlink(&s.engine.socket, &link)?;
    let link = link.display().to_string();
    let data = s.engine.dir.path().join("data-dir");
    std::fs::create_dir_all(&data)?;
    std::fs::write(data.join("file"), "job data\n")?;
    for source in [
        engine_socket.as_str(),
        engine_dir.as_str(),
        link.as_str(),
        "/",
        "/proc",
        "/sys/fs/cgroup",
        "/sys/fs/bpf",
    ] {
        let bind = format!("{source}:/mnt");
        let out = s.docker_in_job_with(NOBODY, &["create", "-v", &bind, &image, "/bin/true"]);
        assert!(
            !out.status.success(),
            "{source}: not refused\n{}",
            text(&out)
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("gateway:"),
            "{source}: {}",
            text(&out)
        );
    }
    assert!(s.engine.containers().is_empty());
    let bind = format!("{}:/mnt", data.display());
    let out = s.docker_in_job_with(
        NOBODY,
        &["run", "--rm", "-v", &bind, &image, "/bin/cat", "/mnt/file"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "job data\n");
    Ok(())
}

/// A network namespace of the test's own with only loopback up (a container's, as far as the
/// gateway can tell).
struct JobNetns(String);

impl JobNetns {
    fn new() -> Result<JobNetns> {
        let name = format!("gwj-{}", unique_id());
        gateway_e2e::run_ok(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = JobNetns(name);
        gateway_e2e::run_ok(Command::new("ip").args(["-n", &ns.0, "link", "set", "lo", "up"]))?;
        Ok(ns)
    }

    /// `gateway run -- e2e-probe connect DST TEXT`, run from inside the namespace.
    fn probe_in_job(&self, daemon: &Daemon, dst: &str, word: &str) -> Result<Value> {
        // nsenter, not `ip netns exec`: that one mounts a sysfs of the namespace over /sys, and
        // with it the cgroup file system the job cgroup is in.
        let out = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.0))
            .arg(gateway_e2e::gateway_bin())
            .arg("--control-socket")
            .arg(&daemon.control_socket)
            .arg("run")
            .arg("--")
            .arg(gateway_e2e::probe_bin())
            .args(["connect", dst, word])
            .output()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(stdout.trim())
            .with_context(|| format!("probe in {}: {}", self.0, text(&out)))
    }
}

impl Drop for JobNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// A job whose processes live in their own network namespace (a container's) reaches a target:
/// the connect is redirected to 127.0.0.1 in *that* namespace, where the daemon opens a listener
/// of its own. Two such namespaces at once each get theirs; the session is the job's, through
/// the gateway, and `gateway status` counts the namespaces listened in.
#[test]
fn a_job_in_its_own_network_namespace_reaches_targets_through_a_listener_there() -> Result<()> {
    let id = unique_id();
    let dir = TempDir::new(&format!("n{id}"));
    let remote = gateway_e2e::Netns::new(&id)?;
    let _echo = gateway_e2e::EchoServer::start(
        &remote,
        dir.path(),
        &[format!("{}:7000", remote.remote_ip)],
    )?;
    let daemon = Daemon::start(DaemonConfig {
        server: String::new(),
        body: format!(
            r#"
[[targets]]
name = "echo"
protocol = "tcp"
address = "{ip}:7000"

[[rules]]
name = "all"
action = "allow"
unauthenticated = true
"#,
            ip = remote.remote_ip
        ),
    })?;
    let dst = format!("{}:7000", remote.remote_ip);
    let (a, b) = (JobNetns::new()?, JobNetns::new()?);
    for (ns, text) in [(&a, "from-a"), (&b, "from-b")] {
        let v = ns.probe_in_job(&daemon, &dst, text)?;
        assert_eq!(v["echo"], text, "{v}\n{}", daemon.log());
        assert!(
            v["local"]
                .as_str()
                .is_some_and(|l| l.starts_with("127.0.0.1:")),
            "through the gateway's listener in the namespace: {v}"
        );
    }
    let sessions: Vec<Value> = daemon
        .sessions()?
        .into_iter()
        .filter(|s| s["target"] == "echo")
        .collect();
    assert_eq!(sessions.len(), 2, "{sessions:#?}");
    for s in &sessions {
        assert_eq!(s["decision"], "allow", "{s}");
        assert!(s["job_id"].is_string(), "{s}");
    }
    let status = daemon.cli_json(&["status", "--json"])?;
    assert!(
        status["containers"]["netns_listeners"].as_u64().is_some(),
        "{status}"
    );
    Ok(())
}
