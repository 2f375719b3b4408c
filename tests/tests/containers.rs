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

/// The default bridge of a test's own engine: a Linux bridge on a 10.x.y.0/24 of its own, removed
/// with the engine.
struct Bridge {
    name: String,
    subnet: (u8, u8),
}

impl Bridge {
    fn new(id: &str) -> Result<Bridge> {
        let subnet = gateway_e2e::free_subnet(id)?;
        let name = format!("gwk{id}");
        gateway_e2e::run_ok(Command::new("ip").args(["link", "add", &name, "type", "bridge"]))?;
        let bridge = Bridge { name, subnet };
        let address = format!("10.{}.{}.1/24", subnet.0, subnet.1);
        gateway_e2e::run_ok(Command::new("ip").args([
            "addr",
            "add",
            &address,
            "dev",
            &bridge.name,
        ]))?;
        gateway_e2e::run_ok(Command::new("ip").args(["link", "set", &bridge.name, "up"]))?;
        Ok(bridge)
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.name])
            .output();
    }
}

/// An engine of the test's own with networking (as a runner host's): a default bridge, user-defined
/// networks, Docker's embedded resolver; `dns`: the resolvers containers on the default bridge use.
/// The image also holds psql, e2e-probe, e2e-echo and getent.
struct Networked {
    engine: Engine,
    bridge: Bridge,
}

impl Networked {
    fn start(dns: &[std::net::Ipv4Addr]) -> Result<Option<Networked>> {
        let args: Vec<String> = dns.iter().map(|ip| format!("--dns={ip}")).collect();
        Self::start_with(&args, &[])
    }

    /// With more dockerd arguments and more programs in the image.
    fn start_with(extra_args: &[String], extra_programs: &[PathBuf]) -> Result<Option<Networked>> {
        let id = unique_id();
        let bridge = Bridge::new(&id)?;
        let mut args = vec![format!("--bridge={}", bridge.name)];
        args.extend_from_slice(extra_args);
        let psql = PathBuf::from(gateway_e2e::PG_BIN).join("psql");
        let mut programs = vec![
            psql,
            gateway_e2e::probe_bin(),
            gateway_e2e::echo_bin(),
            PathBuf::from("/usr/bin/getent"),
        ];
        programs.extend_from_slice(extra_programs);
        let Some(engine) = Engine::start_own(&id, &args, &programs)? else {
            return Ok(None);
        };
        Ok(Some(Networked { engine, bridge }))
    }

    /// A user-defined network (its own bridge and subnet; the engine's embedded resolver serves
    /// names on it). Removed with the engine.
    fn network(&self) -> Result<(String, String)> {
        let id = unique_id();
        let (a, b) = gateway_e2e::free_subnet(&id)?;
        let subnet = format!("10.{a}.{b}.0/24");
        let name = format!("gwn-{id}");
        let out = self.engine.docker(&[
            "network",
            "create",
            "--subnet",
            &subnet,
            "--label",
            &format!("gwe.test={}", self.engine.image),
            &name,
        ]);
        ensure!(out.status.success(), "network create: {}", text(&out));
        Ok((name, subnet))
    }
}

impl Engine {
    /// `Ok(None)`: no engine can run on this machine (the reason is printed).
    fn start() -> Result<Option<Engine>> {
        let id = unique_id();
        if docker_ok(Path::new(SYSTEM_ENGINE)) {
            let engine = Engine {
                socket: PathBuf::from(SYSTEM_ENGINE),
                image: format!("gwe-{id}:latest"),
                _dockerd: None,
                dir: TempDir::new(&format!("k{id}")),
            };
            engine.import_image(&[])?;
            return Ok(Some(engine));
        }
        Self::start_own(&id, &["--bridge=none".to_string()], &[])
    }

    /// A dockerd of the test's own with `args` (networking), the image with `programs` added.
    fn start_own(id: &str, args: &[String], programs: &[PathBuf]) -> Result<Option<Engine>> {
        let dir = TempDir::new(&format!("k{id}"));
        let (socket, dockerd) = {
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
                        "--storage-driver=vfs",
                    ])
                    .args(args),
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
        engine.import_image(programs)?;
        Ok(Some(engine))
    }

    /// A root file system of a few host programs (and `extra`) and their libraries, each at its
    /// host path, imported as an image.
    fn import_image(&self, extra: &[PathBuf]) -> Result<()> {
        let root = self.dir.path().join("rootfs");
        let basic = ["/bin/sh", "/bin/cat", "/bin/sleep", "/bin/true"].map(PathBuf::from);
        for program in basic.iter().chain(extra) {
            let mut files = vec![program.clone()];
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
        let label = format!("label=gwe.test={}", self.image);
        let _ = self.docker(&["network", "prune", "-f", "--filter", &label]);
        if let Some(mut d) = self._dockerd.take() {
            d.stop(libc::SIGTERM, Duration::from_secs(20));
        }
    }
}

/// Mount points of cgroup v1 hierarchies (a hybrid layout; none on a unified one).
fn v1_roots() -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            (right.split_whitespace().next()? == "cgroup")
                .then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
        })
        .collect()
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
    // On a hybrid cgroup layout the engine also made the job's cgroup path on every v1
    // hierarchy (it removes only the container's own cgroup there): the gateway chose that
    // parent, so it removes those too when the job ends.
    let job_path = v2.rsplit_once('/').context("container cgroup")?.0;
    let left = || -> Vec<PathBuf> {
        v1_roots()
            .into_iter()
            .map(|root| root.join(job_path.trim_start_matches('/')))
            .filter(|p| p.exists())
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(10), || left().is_empty()),
        "left on cgroup v1 hierarchies: {:?}",
        left()
    );

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

    // The engine's socket is not handed out but replaced: the container gets the gateway's
    // socket at the path asked for (so docker in it stays the job's), without a rule for binds.
    let script = format!(
        "id=$(docker -H unix://{engine_socket} create -v {sock_bind} {image} /bin/true) && \
         docker -H unix://{engine_socket} inspect --format '{{{{json .HostConfig.Binds}}}}' \"$id\""
    );
    let out = s.daemon.run_job(&[], "/bin/sh", &["-c", &script]);
    assert!(out.status.success(), "{}", text(&out));
    let listen = s.engine.dir.path().join("gateway-docker.sock");
    let binds: Vec<String> = serde_json::from_slice(&out.stdout).with_context(|| text(&out))?;
    assert_eq!(
        binds,
        [format!("{}:/var/run/docker.sock", listen.display())],
        "{}",
        s.daemon.log()
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

/// What a job types to Docker may hold what the masking hides: the `docker` client's command
/// line (`-e SSN=…`) and its shell's, the command of a container or exec it creates, a filter in
/// the request's query, and the same from a process in no job (refused) are recorded masked by
/// the detectors of every `[[masking]]` rule; the engine gets them as typed.
#[test]
fn docker_requests_and_command_lines_are_recorded_masked() -> Result<()> {
    let Some(s) = Setup::new(&format!(
        "{ALLOW_DOCKER}\n[[masking]]\nname = \"pii\"\ndetectors = [\"us_ssn\"]\n"
    ))?
    else {
        return Ok(());
    };
    let secret = "123-45-6789";
    let docker = format!("docker -H unix://{}", s.engine.socket.display());
    let image = &s.engine.image;
    let script = format!(
        "{docker} run --rm -e SSN={secret} {image} /bin/sh -c 'test \"$SSN\" = {secret}' && \
         id=$({docker} run -d {image} /bin/sleep 60) && \
         {docker} exec \"$id\" /bin/true {secret} && \
         {docker} ps -a -q --filter label=ssn={secret} && echo done"
    );
    let out = s.daemon.run_job(&[], "/bin/sh", &["-c", &script]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("done"),
        "the engine got what was typed: {}\n{}",
        text(&out),
        s.daemon.log()
    );
    // A process in no job: refused, recorded with its command line.
    let listen = s.engine.dir.path().join("gateway-docker.sock");
    let refused = Command::new("docker")
        .arg("-H")
        .arg(format!("unix://{}", listen.display()))
        .args(["create", "-e", &format!("SSN={secret}"), image, "/bin/true"])
        .output()?;
    assert!(!refused.status.success(), "{}", text(&refused));

    let sessions: Vec<Value> = s
        .daemon
        .sessions()?
        .into_iter()
        .filter(|x| x["protocol"] == "docker")
        .collect();
    assert!(
        sessions.iter().any(|x| x["decision"] == "deny") && sessions.len() >= 5,
        "{sessions:#?}"
    );
    let masked = |cmdline: &Value| {
        cmdline.as_array().is_some_and(|a| {
            a.iter()
                .any(|arg| arg.as_str().is_some_and(|x| x.contains("[masked:us_ssn]")))
        })
    };
    let mut shown_masked = false;
    for session in &sessions {
        let json = s.daemon.show_session(&session["id"])?;
        assert!(!json.to_string().contains(secret), "{json:#}");
        // The refused client typed it; each of the job's clients runs under the shell that did.
        let process = &json["process"];
        let typed_here = if session["decision"] == "allow" {
            process["ancestry"]
                .as_array()
                .is_some_and(|a| a.iter().any(|p| p["comm"] == "sh" && masked(&p["cmdline"])))
        } else {
            masked(&process["cmdline"])
        };
        assert!(typed_here, "{process:#}");
        let shown = s
            .daemon
            .cli(&["sessions", "show", &session["id"].to_string()]);
        let shown = String::from_utf8_lossy(&shown.stdout).into_owned();
        assert!(!shown.contains(secret), "{shown}");
        shown_masked |= shown.contains("[masked:us_ssn]");
    }
    // (`sessions show` cuts the shell's long command line short.)
    assert!(shown_masked, "no session shows its masked command line");
    let requests = s.docker_requests()?;
    let recorded = |what: &str, replacement: &str| {
        requests
            .iter()
            .any(|r| r[what].to_string().contains(replacement))
    };
    // The filter is read percent-decoded, its match replaced percent-encoded.
    assert!(
        recorded("command", "[masked:us_ssn]") && recorded("path", "%5Bmasked%3Aus_ssn%5D"),
        "{requests:#?}"
    );
    Ok(())
}

/// An unprivileged job user (a root job may replace any path on the way with a link before the
/// engine mounts it, so its bind mounts are refused whatever the rules say).
const NOBODY: &[&str] = &["--user", "nobody"];

/// A rule may allow bind mounts of host paths, but never of what would hand the job the host: the
/// engine's socket's directory, `/`, `/proc`, the cgroup and bpf file systems. The engine's socket
/// itself, also through a symbolic link, becomes the gateway's socket. An ordinary directory the
/// rule names works.
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
    for source in [&engine_socket, &link] {
        let script = format!(
            "id=$(docker -H unix://{engine_socket} create -v {source}:/mnt {image} /bin/true) && \
             docker -H unix://{engine_socket} inspect --format '{{{{json .HostConfig.Binds}}}}' \"$id\""
        );
        let out = s.daemon.run_job(NOBODY, "/bin/sh", &["-c", &script]);
        assert!(out.status.success(), "{source}: {}", text(&out));
        let binds: Vec<String> = serde_json::from_slice(&out.stdout).with_context(|| text(&out))?;
        let listen = s.engine.dir.path().join("gateway-docker.sock");
        assert_eq!(binds, [format!("{}:/mnt", listen.display())], "{source}");
    }
    for source in [
        engine_dir.as_str(),
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

/// A CI runner host: PostgreSQL and an echo server in a "remote host" namespace, a gateway with
/// both as targets (the PostgreSQL fixture's rules and masking), the engine as `[docker]`
/// engine (names and images of containers in sessions), and a cgroup the runner made and
/// attached (`gateway attach`, as a runner's hook does). The runner then starts containers
/// itself, as root, straight to the engine, with `--cgroup-parent` below that cgroup.
struct RunnerHost {
    daemon: Daemon,
    engine: Networked,
    job: gateway_e2e::TestCgroup,
    job_id: String,
    remote: gateway_e2e::Netns,
    _pg: gateway_e2e::Postgres,
    _echo: gateway_e2e::EchoServer,
    _dir: TempDir,
}

impl RunnerHost {
    /// `server`: extra `[server]` lines; `engine`: the engine to use.
    fn new(engine: Networked, server: &str) -> Result<RunnerHost> {
        Self::with(engine, server, "", "")
    }

    /// With extra `[docker]` lines and extra rules (before the PostgreSQL fixture's).
    fn with(engine: Networked, server: &str, docker: &str, rules: &str) -> Result<RunnerHost> {
        let id = unique_id();
        let dir = TempDir::new(&format!("r{id}"));
        let remote = gateway_e2e::Netns::new(&id)?;
        let pg = gateway_e2e::Postgres::start(&remote, dir.path())?;
        pg.admin_sql(gateway_e2e::pg::SCHEMA)?;
        let echo = gateway_e2e::EchoServer::start(
            &remote,
            dir.path(),
            &[format!("{}:7000", remote.remote_ip)],
        )?;
        let secret = dir.path().join("app-db.secret");
        std::fs::write(&secret, "apppw\n")?;
        let body = format!(
            r#"
[docker]
engine = "{engine}"
listen = "{listen}"
{docker}

[[targets]]
name = "app-db"
protocol = "postgres"
address = "{ip}:5432"
[targets.credentials]
user = "app"
password_file = "{secret}"

[[targets]]
name = "echo"
protocol = "tcp"
address = "{ip}:7000"

[[rules]]
name = "echo"
action = "allow"
targets = ["echo"]
unauthenticated = true

{extra_rules}

{rules}
"#,
            extra_rules = rules,
            engine = engine.engine.socket.display(),
            listen = dir.path().join("gateway-docker.sock").display(),
            ip = remote.remote_ip,
            secret = secret.display(),
            rules = gateway_e2e::pg::RULES,
        );
        let daemon = Daemon::start(DaemonConfig {
            server: server.to_string(),
            body,
        })?;
        let job = gateway_e2e::TestCgroup::new("runner")?;
        let attached = daemon.cli_json(&[
            "attach",
            "--cgroup",
            &job.path.display().to_string(),
            "--json",
        ])?;
        let job_id = attached["job_id"]
            .as_str()
            .or_else(|| attached["id"].as_str())
            .with_context(|| format!("attach: {attached}"))?
            .to_string();
        Ok(RunnerHost {
            daemon,
            engine,
            job,
            job_id,
            remote,
            _pg: pg,
            _echo: echo,
            _dir: dir,
        })
    }

    /// `--cgroup-parent` as the runner gives it: the attached cgroup, relative to the hierarchy.
    fn cgroup_parent(&self) -> String {
        let root = gateway_e2e::cgroup2_root().expect("cgroup2");
        format!(
            "/{}",
            self.job
                .path
                .strip_prefix(root)
                .expect("below root")
                .display()
        )
    }

    /// `docker run --cgroup-parent <job> ARGS` by the runner, straight to the engine.
    fn run(&self, args: &[&str]) -> Output {
        let parent = self.cgroup_parent();
        let mut all = vec!["run", "--cgroup-parent", parent.as_str()];
        all.extend_from_slice(args);
        self.engine.engine.docker(&all)
    }

    fn image(&self) -> &str {
        &self.engine.engine.image
    }

    /// The gateway's Docker socket.
    fn gateway_socket(&self) -> PathBuf {
        self._dir.path().join("gateway-docker.sock")
    }

    /// The `docker_request` records of every Docker session, each with the session's process.
    fn docker_requests(&self) -> Result<Vec<(Value, Value)>> {
        let mut found = Vec::new();
        for s in self.daemon.sessions()? {
            if s["protocol"] != "docker" {
                continue;
            }
            let shown = self.daemon.show_session(&s["id"])?;
            for e in shown["events"].as_array().into_iter().flatten() {
                if e["kind"] == "docker_request" {
                    found.push((e["detail"].clone(), shown["process"].clone()));
                }
            }
        }
        Ok(found)
    }

    /// psql in a container of the job: `-At`, the statement, no password anywhere.
    fn psql(&self, name: &str, network: &str, sql: &str) -> Output {
        let psql = format!("{}/psql", gateway_e2e::PG_BIN);
        let host = self.remote.remote_ip.to_string();
        self.run(&[
            "--name",
            name,
            "--network",
            network,
            "-e",
            "PGPASSFILE=/nonexistent",
            "-e",
            "PGCONNECT_TIMEOUT=10",
            self.image(),
            &psql,
            "-X",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            &host,
            "-U",
            "agent",
            "-d",
            "app",
            "-c",
            sql,
        ])
    }

    /// The full id of a container.
    fn container_id(&self, name: &str) -> Result<String> {
        let out = self
            .engine
            .engine
            .docker(&["inspect", "--format", "{{.Id}}", name]);
        ensure!(out.status.success(), "inspect {name}: {}", text(&out));
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Sessions to `target`, each with what `sessions show` says of its process.
    fn sessions_to(&self, target: &str) -> Result<Vec<(Value, Value)>> {
        let mut found = Vec::new();
        for s in self.daemon.sessions()? {
            if s["target"] == target {
                let shown = self.daemon.show_session(&s["id"])?;
                found.push((s, shown));
            }
        }
        found.sort_by_key(|(s, _)| s["id"].as_i64());
        Ok(found)
    }

    /// Asserts that `session` is the job's and ran in container `name` (engine-confirmed).
    fn assert_in_container(&self, session: &(Value, Value), name: &str) -> Result<()> {
        let (listed, shown) = session;
        assert_eq!(listed["job_id"], self.job_id.as_str(), "{listed}");
        let container = &shown["process"]["container"];
        assert_eq!(
            container["id"],
            self.container_id(name)?.as_str(),
            "{shown}"
        );
        assert_eq!(
            container["name"]
                .as_str()
                .map(|n| n.trim_start_matches('/')),
            Some(name),
            "{shown}"
        );
        assert_eq!(container["image"], self.image(), "{shown}");
        assert_eq!(container["verified"], true, "{shown}");
        Ok(())
    }
}

impl Drop for RunnerHost {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- dockerd log ---\n{}",
                std::fs::read_to_string(self.engine.engine.dir.path().join("dockerd.log"))
                    .unwrap_or_default()
            );
        }
        for id in self.engine.engine.containers() {
            let _ = self.engine.engine.docker(&["rm", "-f", &id]);
        }
        // What the engine made for the runner's parent on cgroup v1 hierarchies (hybrid layout):
        // the runner's to remove, and this test is the runner.
        let root = gateway_e2e::cgroup2_root().expect("cgroup2");
        if let (Ok(rel), Ok(dirs)) = (
            self.job.path.strip_prefix(&root),
            std::fs::read_dir("/sys/fs/cgroup"),
        ) {
            for d in dirs.flatten() {
                let p = d.path().join(rel);
                if p != self.job.path {
                    remove_cgroup_tree(&p);
                }
            }
        }
    }
}

/// GitLab Runner's docker executor with `cgroup_parent`, or any runner that starts the job's
/// container itself: the container's processes are in a cgroup below the attached job cgroup, so
/// the job's programs cover them. psql in it reaches PostgreSQL through the gateway's listener in
/// the container's network namespace: the masked column comes back masked, a denied statement
/// is refused, and the session is the job's, with the container (id, name, image) recorded.
#[test]
fn a_runners_job_container_under_an_attached_cgroup_reaches_postgres_through_the_gateway()
-> Result<()> {
    let Some(engine) = Networked::start(&[])? else {
        return Ok(());
    };
    let host = RunnerHost::new(engine, "")?;
    let name = format!("gwe-job-{}", unique_id());
    let out = host.psql(
        &name,
        "bridge",
        "select id, email, ssn from users where id = 1",
    );
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out),
        host.daemon.log()
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "1|[masked:email]|[masked]"
    );
    let denied = format!("{name}-drop");
    let out = host.psql(&denied, "bridge", "drop table notes");
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no-drop"),
        "{}",
        text(&out)
    );
    let sessions = host.sessions_to("app-db")?;
    assert_eq!(sessions.len(), 2, "{sessions:#?}");
    for (session, container) in sessions.iter().zip([&name, &denied]) {
        host.assert_in_container(session, container)?;
    }
    // The process chain starts in the container: psql is its first process.
    assert_eq!(
        sessions[0].1["process"]["comm"], "psql",
        "{}",
        sessions[0].1
    );
    Ok(())
}

/// A job's service container (GitLab `services:`, a GitHub Actions service container): a second
/// container below the same attached cgroup, on the job's user-defined network. Its own outbound
/// connections are the job's (with its container recorded). The job container finds it by name
/// through Docker's embedded resolver (127.0.0.11 in the container's namespace) and reaches it
/// directly on the port `allow_direct` names for the job network; other ports of it stay refused.
#[test]
fn a_service_container_is_covered_by_the_job_and_reached_by_name_from_the_job_container()
-> Result<()> {
    let Some(engine) = Networked::start(&[])? else {
        return Ok(());
    };
    let (network, subnet) = engine.network()?;
    let host = RunnerHost::new(engine, &format!("allow_direct = [\"{subnet}:7100\"]"))?;
    let probe = gateway_e2e::probe_bin().display().to_string();
    let echo = gateway_e2e::echo_bin().display().to_string();
    let id = unique_id();
    let service = format!("gwe-svc-{id}");
    // The service first connects out (to the echo target), then serves on 7100 and 7101.
    let script = format!(
        "{probe} connect {}:7000 from-service; exec {echo} 0.0.0.0:7100 0.0.0.0:7101",
        host.remote.remote_ip
    );
    let out = host.run(&[
        "-d",
        "--name",
        &service,
        "--network",
        &network,
        "--network-alias",
        "db",
        host.image(),
        "/bin/sh",
        "-c",
        &script,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let serving = wait_until(Duration::from_secs(30), || {
        let logs = host.engine.engine.docker(&["logs", &service]);
        String::from_utf8_lossy(&logs.stdout).contains("listening 0.0.0.0:7101")
    });
    let logs = host.engine.engine.docker(&["logs", &service]);
    assert!(serving, "{}\n{}", text(&logs), host.daemon.log());
    let first: Value = serde_json::from_str(
        String::from_utf8_lossy(&logs.stdout)
            .lines()
            .next()
            .unwrap_or_default(),
    )
    .with_context(|| text(&logs))?;
    assert_eq!(
        first["echo"],
        "from-service",
        "{first}\n{}",
        host.daemon.log()
    );
    let sessions = host.sessions_to("echo")?;
    assert_eq!(sessions.len(), 1, "{sessions:#?}");
    host.assert_in_container(&sessions[0], &service)?;

    // The job container: the service by its alias and by its name, through the engine's resolver.
    let job = |name: &str, dst: &str| -> Result<Value> {
        let out = host.run(&[
            "--name",
            name,
            "--network",
            &network,
            host.image(),
            &probe,
            "connect",
            dst,
            "to-service",
        ]);
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim())
            .with_context(|| format!("{dst}: {}", text(&out)))
    };
    for (n, dst) in [("alias", "db:7100"), ("name", &format!("{service}:7100"))] {
        let v = job(&format!("gwe-job-{n}-{id}"), dst)?;
        assert_eq!(v["echo"], "to-service", "{dst}: {v}\n{}", host.daemon.log());
        // Directly to the service's address on the job network, not through the gateway.
        assert!(
            v["peer"]
                .as_str()
                .is_some_and(|p| p.starts_with(&subnet[..subnet.len() - 4])),
            "{v}"
        );
    }
    // A port allow_direct does not name: refused (found by name, then the connect refused).
    let v = job(&format!("gwe-job-other-{id}"), "db:7101")?;
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["errno"], libc::EPERM, "{v}");
    // The service's outbound connection is the only session; reaching the service made none.
    assert_eq!(host.sessions_to("echo")?.len(), 1);
    Ok(())
}

/// Two containers of the job, each in its own network namespace, connect to the same target from
/// the same source address and port at the same time: the gateway's listener in each namespace
/// sees 127.0.0.1:40000 both times, and each connection is its own session, attributed to its
/// own container.
#[test]
fn two_containers_with_the_same_source_port_at_once_are_separate_sessions() -> Result<()> {
    let Some(engine) = Networked::start(&[])? else {
        return Ok(());
    };
    let host = RunnerHost::new(engine, "")?;
    let probe = gateway_e2e::probe_bin().display().to_string();
    let dst = format!("{}:7000", host.remote.remote_ip);
    let id = unique_id();
    let names = [format!("gwe-a-{id}"), format!("gwe-b-{id}")];
    let parent = host.cgroup_parent();
    let mut held = Vec::new();
    for name in &names {
        // `-i`: the probe holds its connection until the test closes its standard input.
        let mut child = Command::new("docker")
            .arg("-H")
            .arg(format!("unix://{}", host.engine.engine.socket.display()))
            .args(["run", "-i", "--cgroup-parent", &parent, "--name", name])
            .args([
                host.image(),
                &probe,
                "connect-from",
                "40000",
                &dst,
                name,
                "hold",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.as_mut().context("stdout")?),
            &mut line,
        )?;
        let v: Value =
            serde_json::from_str(line.trim()).with_context(|| format!("{name}: {line:?}"))?;
        held.push((child, v));
    }
    // Both connected and held open at once.
    for ((_, v), name) in held.iter().zip(&names) {
        assert_eq!(v["echo"], name.as_str(), "{v}\n{}", host.daemon.log());
        assert_eq!(v["local"], "127.0.0.1:40000", "{v}");
    }
    let sessions = host.sessions_to("echo")?;
    assert_eq!(sessions.len(), 2, "{sessions:#?}");
    for (session, name) in sessions.iter().zip(&names) {
        host.assert_in_container(session, name)?;
        assert_eq!(session.0["decision"], "allow", "{}", session.0);
    }
    for (mut child, _) in held {
        drop(child.stdin.take());
        let status = child.wait()?;
        assert!(status.success(), "{status}");
    }
    Ok(())
}

/// A DNS server (dnsmasq) in a namespace of the test's own, on .2 and .3 of its subnet, that
/// knows one name.
struct Dns {
    ns: gateway_e2e::Netns,
    server: Option<Process>,
    dir: TempDir,
}

impl Dns {
    fn new() -> Result<Dns> {
        let id = unique_id();
        let ns = gateway_e2e::Netns::new(&id)?;
        // A second address: a resolver the gateway is not told about.
        gateway_e2e::run_ok(Command::new("ip").args([
            "-n",
            &ns.name,
            "addr",
            "add",
            &format!("{}/24", Self::other_of(&ns)),
            "dev",
            &format!("gv{id}r"),
        ]))?;
        Ok(Dns {
            ns,
            server: None,
            dir: TempDir::new(&format!("s{id}")),
        })
    }

    fn other_of(ns: &gateway_e2e::Netns) -> std::net::Ipv4Addr {
        let [a, b, c, _] = ns.remote_ip.octets();
        std::net::Ipv4Addr::new(a, b, c, 3)
    }

    /// The resolver the gateway and the engine are configured with.
    fn resolver(&self) -> std::net::Ipv4Addr {
        self.ns.remote_ip
    }

    /// One the gateway is not told about.
    fn other(&self) -> std::net::Ipv4Addr {
        Self::other_of(&self.ns)
    }

    /// Serves `name` → `ip`, on both addresses; replies reach containers on `subnet` (x.y.z.0/24)
    /// through the host.
    fn serve(&mut self, name: &str, ip: std::net::Ipv4Addr, subnet: &str) -> Result<()> {
        gateway_e2e::run_ok(Command::new("ip").args([
            "-n",
            &self.ns.name,
            "route",
            "add",
            subnet,
            "via",
            &self.ns.host_ip.to_string(),
        ]))?;
        let mut cmd = self.ns.command("dnsmasq");
        cmd.args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--user=root",
            "--log-queries",
            "--log-facility=-",
        ])
        .arg(format!("--listen-address={}", self.resolver()))
        .arg(format!("--listen-address={}", self.other()))
        .arg(format!(
            "--pid-file={}",
            self.dir.path().join("dnsmasq.pid").display()
        ))
        .arg(format!("--address=/{name}/{ip}"));
        let mut server = Process::spawn("dnsmasq", &mut cmd, self.dir.path().join("dnsmasq.log"))?;
        let up = wait_until(Duration::from_secs(10), || {
            !server.alive() || server.output().contains("started")
        });
        ensure!(up && server.alive(), "dnsmasq: {}", server.output());
        self.server = Some(server);
        Ok(())
    }

    fn log(&self) -> String {
        self.server
            .as_ref()
            .map(Process::output)
            .unwrap_or_default()
    }
}

/// DNS in job containers keeps working, and only through resolvers the gateway allows: on the
/// default bridge the container asks the resolver the engine gives it (the one in
/// `server.dns_resolvers`); on a user-defined network it asks Docker's embedded resolver
/// (127.0.0.11 in its own namespace), which forwards to the same. psql then reaches the target by
/// its name. A container given another resolver (`--dns`) gets nothing: its query is refused and
/// recorded.
#[test]
fn dns_in_job_containers_works_through_the_allowed_resolvers_only() -> Result<()> {
    let mut dns = Dns::new()?;
    let Some(engine) = Networked::start(&[dns.resolver()])? else {
        return Ok(());
    };
    let bridge = engine.bridge.subnet;
    let (network, subnet) = engine.network()?;
    let host = RunnerHost::new(engine, &format!("dns_resolvers = [\"{}\"]", dns.resolver()))?;
    let name = "app-db.gwe.test";
    dns.serve(
        name,
        host.remote.remote_ip,
        &format!("10.{}.{}.0/24", bridge.0, bridge.1),
    )?;
    gateway_e2e::run_ok(Command::new("ip").args([
        "-n",
        &dns.ns.name,
        "route",
        "add",
        &subnet,
        "via",
        &dns.ns.host_ip.to_string(),
    ]))?;
    let id = unique_id();
    let resolve = |container: &str, network: &str, extra: &[&str]| {
        let mut args = vec!["--name", container, "--network", network];
        args.extend_from_slice(extra);
        args.extend([host.image(), "/usr/bin/getent", "ahostsv4", name]);
        host.run(&args)
    };
    let expected = host.remote.remote_ip.to_string();
    for (n, network) in [("bridge", "bridge"), ("network", network.as_str())] {
        let out = resolve(&format!("gwe-dns-{n}-{id}"), network, &[]);
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).starts_with(&expected),
            "{n}: {}\n{}\n{}",
            text(&out),
            dns.log(),
            host.daemon.log()
        );
    }
    // The embedded resolver is what the container on the user-defined network asked.
    let conf = host.run(&[
        "--rm",
        "--network",
        &network,
        host.image(),
        "/bin/cat",
        "/etc/resolv.conf",
    ]);
    assert!(
        String::from_utf8_lossy(&conf.stdout).contains("nameserver 127.0.0.11"),
        "{}",
        text(&conf)
    );
    // The target by its name: through the gateway, masked.
    let psql = format!("{}/psql", gateway_e2e::PG_BIN);
    let out = host.run(&[
        "--name",
        &format!("gwe-dns-psql-{id}"),
        "-e",
        "PGPASSFILE=/nonexistent",
        host.image(),
        &psql,
        "-X",
        "-At",
        "-h",
        name,
        "-U",
        "agent",
        "-d",
        "app",
        "-c",
        "select ssn from users where id = 2",
    ]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out),
        host.daemon.log()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[masked]");
    // Another resolver: refused in the container's namespace, recorded, never asked.
    let other = dns.other().to_string();
    let queries = |log: String| log.lines().filter(|l| l.contains(" query[")).count();
    let before = queries(dns.log());
    let out = resolve(&format!("gwe-dns-other-{id}"), "bridge", &["--dns", &other]);
    assert!(!out.status.success(), "{}", text(&out));
    assert_eq!(queries(dns.log()), before, "{}", dns.log());
    let refused = wait_until(Duration::from_secs(5), || {
        host.daemon.sessions().is_ok_and(|l| {
            l.iter().any(|x| {
                x["protocol"] == "udp"
                    && x["decision"] == "deny"
                    && x.to_string().contains(&format!("{other}:53"))
            })
        })
    });
    assert!(refused, "{:#?}", host.daemon.sessions()?);
    Ok(())
}

/// The GitHub Actions runner's `Runner.Worker` on a gateway runner host: a shell in the attached
/// job cgroup (where the job-started hook moves the worker), as the runner's user (here nobody),
/// with `DOCKER_HOST` naming the gateway's socket (the runner's `.env`). It runs the runner's
/// `docker` command lines one at a time, as the runner builds them (one argument string).
struct Worker {
    child: std::process::Child,
    dir: PathBuf,
    next: usize,
}

/// The runner's user in these tests.
const RUNNER_UID: u32 = 65534;

impl Worker {
    fn start(job: &Path, dir: &Path, gateway_socket: &Path) -> Result<Worker> {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777))?;
        let child = Command::new("setpriv")
            .arg(format!("--reuid={RUNNER_UID}"))
            .arg(format!("--regid={RUNNER_UID}"))
            .args(["--clear-groups", "sh"])
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", dir)
            .env("DOCKER_CONFIG", dir.join("docker-config"))
            .env(
                "DOCKER_HOST",
                format!("unix://{}", gateway_socket.display()),
            )
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let worker = Worker {
            child,
            dir: dir.to_path_buf(),
            next: 0,
        };
        // Nothing runs before the shell reads its first line: it is in the job cgroup by then.
        std::fs::write(job.join("cgroup.procs"), worker.child.id().to_string())?;
        Ok(worker)
    }

    /// `docker ARGS`: exit code, standard output, standard error.
    fn docker(&mut self, args: &str) -> Result<(i32, String, String)> {
        use std::io::Write as _;
        let n = self.next;
        self.next += 1;
        let at = |ext: &str| self.dir.join(format!("{n}.{ext}"));
        let line = format!(
            "docker {args} </dev/null >{out} 2>{err}; echo $? >{tmp}; mv {tmp} {rc}\n",
            out = at("out").display(),
            err = at("err").display(),
            tmp = at("tmp").display(),
            rc = at("rc").display(),
        );
        self.child
            .stdin
            .as_mut()
            .context("worker stdin")?
            .write_all(line.as_bytes())?;
        ensure!(
            wait_until(Duration::from_secs(120), || at("rc").exists()),
            "docker {args}: no exit within 120s"
        );
        let rc = std::fs::read_to_string(at("rc"))?.trim().parse()?;
        Ok((
            rc,
            std::fs::read_to_string(at("out"))?,
            std::fs::read_to_string(at("err"))?,
        ))
    }

    /// `docker ARGS`, which must succeed; its standard output, trimmed.
    fn docker_ok(&mut self, args: &str) -> Result<String> {
        let (rc, out, err) = self.docker(args)?;
        ensure!(rc == 0, "docker {args}: exit {rc}\n{out}\n{err}");
        Ok(out.trim().to_string())
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Removes a network the runner made (and the containers on the engine first), if the test
/// ends before the runner's cleanup does.
struct RemoveNetwork<'a>(&'a Engine, String);

impl Drop for RemoveNetwork<'_> {
    fn drop(&mut self) {
        for id in self.0.containers() {
            let _ = self.0.docker(&["rm", "-f", &id]);
        }
        let _ = self.0.docker(&["network", "rm", &self.1]);
    }
}

/// A runner's root directory as the runner lays it out, owned by the runner's user: `_work` (with
/// `_temp`, `_actions`, `_tool`, the workspace, `_temp/_github_home`, `_temp/_github_workflow`) and
/// `externals`.
fn runner_root(at: &Path) -> Result<PathBuf> {
    let root = at.join("runner");
    for d in [
        "_work/_temp/_github_home",
        "_work/_temp/_github_workflow",
        "_work/_actions",
        "_work/_tool",
        "_work/repo/repo",
        "externals",
    ] {
        std::fs::create_dir_all(root.join(d))?;
    }
    gateway_e2e::run_ok(
        Command::new("chown")
            .arg("-R")
            .arg(format!("{RUNNER_UID}:{RUNNER_UID}"))
            .arg(&root),
    )?;
    Ok(root)
}

/// The `[rules.docker]` rule a runner host needs for the runner's own requests: bind mounts of its
/// work directory (and what is below it) and of its externals, nothing else.
fn runner_rule(root: &Path) -> String {
    let r = root.display();
    format!(
        r#"
[[rules]]
name = "github-runner"
action = "allow"
unauthenticated = true
docker = {{ bind_sources = ["{r}/_work", "{r}/_work/*", "{r}/externals"] }}
"#
    )
}

/// A GitHub Actions `container:` job with a service container, through the gateway's Docker API:
/// the runner's exact `docker` command lines (actions/runner `DockerCommandManager` and
/// `ContainerOperationProvider`), run by the job's worker in the attached job cgroup. The job's
/// network, its service and its job container are the job's (below the job's cgroup); the runner's
/// bind of the engine's socket becomes a bind of the gateway's socket; its work directories are
/// bound as the runner rule allows. Each step (`docker exec`) is the job's: psql reaches
/// PostgreSQL through the gateway (masking, the session the job's with the container recorded),
/// the service is reached by its alias, and `docker run --privileged` from inside the job
/// container (through the mounted socket) is refused and recorded as the job container's. The
/// runner's cleanup then leaves nothing behind.
#[test]
fn a_github_actions_container_job_runs_through_the_gateways_docker_api() -> Result<()> {
    let pool_id = unique_id();
    let (a, b) = gateway_e2e::free_subnet(&pool_id)?;
    let pool = format!("10.{a}.{b}.0/24");
    let docker_cli = which("docker")?;
    let Some(engine) = Networked::start_with(
        &[format!("--default-address-pool=base={pool},size=26")],
        &[which("tail")?, docker_cli],
    )?
    else {
        return Ok(());
    };
    let scratch = TempDir::new(&format!("g{pool_id}"));
    let root = runner_root(scratch.path())?;
    let host = RunnerHost::with(
        engine,
        &format!("allow_direct = [\"{pool}:7100\"]"),
        "runner_users = [\"nobody\"]",
        &runner_rule(&root),
    )?;
    let mut worker = Worker::start(
        &host.job.path,
        &scratch.path().join("worker"),
        &host.gateway_socket(),
    )?;
    let image = host.image().to_string();
    let echo = gateway_e2e::echo_bin().display().to_string();
    let label = &pool_id[..6];
    let network = format!("github_network_{pool_id}");
    let r = root.display();

    // StartContainersAsync: versions, stale containers and networks of this runner.
    worker.docker_ok("version --format '{{.Server.APIVersion}}'")?;
    worker.docker_ok("version --format '{{.Client.APIVersion}}'")?;
    let stale = worker.docker_ok(&format!(
        "ps --all --quiet --no-trunc --filter \"label={label}\""
    ))?;
    assert_eq!(stale, "");
    // The gateway does not offer prune; the runner only warns when it fails.
    let (rc, _, err) =
        worker.docker(&format!("network prune --force --filter \"label={label}\""))?;
    assert!(rc != 0 && err.contains("gateway:"), "{err}");
    worker.docker_ok(&format!("network create --label {label} {network}"))?;
    let _cleanup = RemoveNetwork(&host.engine.engine, network.clone());

    // The service container (`services: db:` with an entrypoint and command).
    let service_name = format!("{label}_gwe_db_{pool_id}");
    let service = worker.docker_ok(&format!(
        "create --name {service_name} --label {label} --network {network} --network-alias db --entrypoint \"{echo}\" -e GITHUB_ACTIONS=true -e CI=true {image} 0.0.0.0:7100"
    ))?;
    worker.docker_ok(&format!("start {service}"))?;
    let running = worker.docker_ok(&format!(
        "ps --all --filter id={service} --filter status=running --no-trunc --format \"{{{{.ID}}}} {{{{.Status}}}}\""
    ))?;
    assert!(running.starts_with(&service), "{running}");
    worker.docker_ok(&format!("port {service}"))?;

    // The job container, with the runner's mounts, environment and entrypoint.
    let job_name = format!("{label}_gwe_job_{pool_id}");
    let job = worker.docker_ok(&format!(
        "create --name {job_name} --label {label} --workdir /__w/repo/repo --network {network} \
         -e \"HOME=/github/home\" -e GITHUB_ACTIONS=true -e CI=true \
         -v \"/var/run/docker.sock\":\"/var/run/docker.sock\" \
         -v \"{r}/_work\":\"/__w\" -v \"{r}/externals\":\"/__e\":ro \
         -v \"{r}/_work/_temp\":\"/__w/_temp\" -v \"{r}/_work/_actions\":\"/__w/_actions\" \
         -v \"{r}/_work/_tool\":\"/__t\" -v \"{r}/_work/_temp/_github_home\":\"/github/home\" \
         -v \"{r}/_work/_temp/_github_workflow\":\"/github/workflow\" \
         --entrypoint \"tail\" {image} \"-f\" \"/dev/null\""
    ))?;
    worker.docker_ok(&format!("start {job}"))?;
    let running = worker.docker_ok(&format!(
        "ps --all --filter id={job} --filter status=running --no-trunc --format \"{{{{.ID}}}} {{{{.Status}}}}\""
    ))?;
    assert!(
        running.starts_with(&job),
        "{running}\n{}",
        host.daemon.log()
    );
    worker.docker_ok(&format!(
        "inspect --format \"{{{{range .Config.Env}}}}{{{{println .}}}}{{{{end}}}}\" {job}"
    ))?;
    worker.docker_ok(&format!(
        "inspect --format=\"{{{{if .Config.Healthcheck}}}}{{{{print .State.Health.Status}}}}{{{{end}}}}\" {service}"
    ))?;
    // Both are below the job's cgroup, and the job container has the gateway's socket where the
    // runner asked for the engine's.
    for id in [&job, &service] {
        let parent =
            host.engine
                .engine
                .docker(&["inspect", "--format", "{{.HostConfig.CgroupParent}}", id]);
        assert_eq!(
            String::from_utf8_lossy(&parent.stdout).trim(),
            host.cgroup_parent(),
            "{}",
            text(&parent)
        );
    }
    let binds =
        host.engine
            .engine
            .docker(&["inspect", "--format", "{{json .HostConfig.Binds}}", &job]);
    let binds: Vec<String> = serde_json::from_slice(&binds.stdout).with_context(|| text(&binds))?;
    assert!(
        binds.contains(&format!(
            "{}:/var/run/docker.sock",
            host.gateway_socket().display()
        )),
        "{binds:?}"
    );

    let serving = wait_until(Duration::from_secs(30), || {
        let logs = host.engine.engine.docker(&["logs", &service]);
        String::from_utf8_lossy(&logs.stdout).contains("listening 0.0.0.0:7100")
    });
    assert!(
        serving,
        "{}",
        text(&host.engine.engine.docker(&["logs", &service]))
    );

    // Steps: the runner writes each script to _temp and runs it with `docker exec`.
    let mut step = |n: usize, script: &str| -> Result<(i32, String, String)> {
        std::fs::write(root.join(format!("_work/_temp/step{n}.sh")), script)?;
        worker.docker(&format!(
            "exec -i --workdir /__w/repo/repo -e GITHUB_ACTIONS=true -e CI=true {job} sh -e /__w/_temp/step{n}.sh"
        ))
    };
    let psql = format!(
        "PGPASSFILE=/nonexistent PGCONNECT_TIMEOUT=10 {}/psql -X -At -v ON_ERROR_STOP=1 -h {} -U agent -d app -c 'select id, email, ssn from users where id = 1'\n",
        gateway_e2e::PG_BIN,
        host.remote.remote_ip
    );
    let (rc, out, err) = step(1, &psql)?;
    assert_eq!(rc, 0, "{out}\n{err}\n{}", host.daemon.log());
    assert_eq!(out.trim(), "1|[masked:email]|[masked]");
    let sessions = host.sessions_to("app-db")?;
    assert_eq!(sessions.len(), 1, "{sessions:#?}");
    host.assert_in_container(&sessions[0], &job_name)?;

    let probe = gateway_e2e::probe_bin().display().to_string();
    let (rc, out, err) = step(2, &format!("{probe} connect db:7100 to-service\n"))?;
    assert_eq!(rc, 0, "{out}\n{err}");
    let v: Value = serde_json::from_str(out.trim()).with_context(|| format!("{out}\n{err}"))?;
    assert_eq!(v["echo"], "to-service", "{v}\n{}", host.daemon.log());

    // docker inside the job container: the mounted socket is the gateway's, so it is the job's.
    let (rc, out, err) = step(
        3,
        &format!(
            "docker ps --format '{{{{.Names}}}}'\ndocker run --rm --privileged {image} /bin/true || echo refused\n"
        ),
    )?;
    assert_eq!(rc, 0, "{out}\n{err}");
    assert!(
        out.contains(&job_name) && out.contains(&service_name),
        "{out}"
    );
    assert!(out.contains("refused"), "{out}\n{err}");
    assert!(
        err.contains("Error response from daemon: gateway:") && err.contains("privileged"),
        "{err}"
    );
    let requests = host.docker_requests()?;
    let refused = requests
        .iter()
        .find(|(r, _)| r["operation"] == "container_create" && r["decision"] == "deny")
        .with_context(|| format!("no refusal recorded: {requests:#?}"))?;
    assert!(
        refused.0["privileges"].to_string().contains("privileged"),
        "{refused:?}"
    );
    assert_eq!(refused.1["container"]["id"], job.as_str(), "{refused:?}");
    assert_eq!(host.engine.engine.containers().len(), 2);

    // A container action (`uses: docker://…`) while the job container runs: the runner binds
    // paths below `_work`, which the job container has bound read-write (a step could swap one
    // for a symbolic link to / before the engine mounts it). Refused, though the rule names them.
    let (rc, _, err) = worker.docker(&format!(
        "run --name {label}_action_{pool_id} --label {label} --workdir /github/workspace --rm \
         -e GITHUB_ACTIONS=true -e CI=true --network {network} \
         -v \"/var/run/docker.sock\":\"/var/run/docker.sock\" \
         -v \"{r}/_work/_temp/_github_home\":\"/github/home\" \
         -v \"{r}/_work/repo/repo\":\"/github/workspace\" {image} /bin/true"
    ))?;
    assert!(rc != 0 && err.contains("bound read-write"), "{err}");
    assert_eq!(host.engine.engine.containers().len(), 2);

    // StopContainersAsync.
    worker.docker_ok(&format!("rm --force {job}"))?;
    worker.docker_ok(&format!("rm --force {service}"))?;
    worker.docker_ok(&format!("network rm {network}"))?;
    assert!(host.engine.engine.containers().is_empty());
    let left = host.engine.engine.docker(&[
        "network",
        "ls",
        "--quiet",
        "--filter",
        &format!("name={network}"),
    ]);
    assert_eq!(
        String::from_utf8_lossy(&left.stdout).trim(),
        "",
        "{}",
        text(&left)
    );
    Ok(())
}

/// The labels GitLab Runner's docker executor puts on every container of job `job`
/// (executors/docker/internal/labels in gitlab-runner), with the container's type.
fn gitlab_labels(job: u64, project: u64, kind: &str) -> Value {
    serde_json::json!({
        "com.gitlab.gitlab-runner.job.id": job.to_string(),
        "com.gitlab.gitlab-runner.job.url": format!("https://gitlab.test/acme/app/-/jobs/{job}"),
        "com.gitlab.gitlab-runner.project.id": project.to_string(),
        "com.gitlab.gitlab-runner.pipeline.id": "900",
        "com.gitlab.gitlab-runner.runner.id": "t3st1ng",
        "com.gitlab.gitlab-runner.managed": "true",
        "com.gitlab.gitlab-runner.type": kind,
    })
}

/// Removes the GitLab jobs' cgroup parent (relative to the v2 root) and anything left below
/// it at the end of a test, with the copies the engine made on cgroup v1 hierarchies.
struct RemoveCgroup(String);

impl Drop for RemoveCgroup {
    fn drop(&mut self) {
        if let Ok(root) = gateway_e2e::cgroup2_root() {
            remove_cgroup_tree(&root.join(&self.0));
        }
        if let Ok(dirs) = std::fs::read_dir("/sys/fs/cgroup") {
            for d in dirs.flatten() {
                remove_cgroup_tree(&d.path().join(&self.0));
            }
        }
    }
}

/// GitLab Runner's docker executor sending its requests to the gateway's socket
/// (`[runners.docker] host`), with `[docker.gitlab]`: the test replays what the runner sends
/// (POST /containers/create with the job's labels, every job variable in `Env`, its own
/// `CgroupParent`; then start and attach), as root outside every job. Two jobs of two
/// projects run at once: each container lands in its job's own cgroup (not the runner's
/// parent), a service container created before any token is in the same cgroup, unbound until
/// the build container's ID token binds it; each job's psql session is recorded with its own
/// identity, and the rules differ per identity (project 22 may not use the database). A build
/// container carrying another job's token, and a container without the job's labels, are
/// refused and recorded. When a job's containers are removed, its cgroup goes.
#[test]
fn gitlab_runner_jobs_get_a_cgroup_and_an_identity_each_through_the_gateways_socket() -> Result<()>
{
    use gateway_e2e::oidc::{Issuer, Mode, chrono_now};
    const AUDIENCE: &str = "https://gateway.test";
    let Some(engine) = Networked::start(&[])? else {
        return Ok(());
    };
    let id = unique_id();
    let dir = TempDir::new(&format!("gl{id}"));
    let issuer = Issuer::start(dir.path(), Mode::Real)?;
    let parent = format!("gwe-gitlab-{id}");
    let root = gateway_e2e::cgroup2_root()?;
    let _remove_parent = RemoveCgroup(parent.clone());
    let docker = format!(
        "\n[docker.gitlab]\nrunner_users = [\"root\"]\ncgroup_parent = \"{parent}\"\ntoken_variable = \"GATEWAY_ID_TOKEN\"\nissuer = \"{url}\"\n",
        url = issuer.url
    );
    let rules = format!(
        r#"
[[issuers]]
url = "{url}"
audiences = ["{AUDIENCE}"]
ca_file = "{ca}"
fetch_timeout = "5s"
known_claims = ["job_id", "project_id"]

[[rules]]
name = "gitlab-project-22-no-db"
action = "deny"
targets = ["app-db"]
claims = {{ project_id = "22" }}

[[rules]]
name = "gitlab-jobs-db"
action = "allow"
targets = ["app-db"]
claims = {{ iss = "{url}" }}
"#,
        url = issuer.url,
        ca = issuer.tls.ca.display(),
    );
    let host = RunnerHost::with(engine, "", &docker, &rules)?;
    let socket = host.gateway_socket();
    let gateway_docker = |args: &[&str]| -> Output {
        Command::new("docker")
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .args(args)
            .output()
            .expect("run docker")
    };
    // POST /containers/create as the runner sends it: status and answer.
    let create = |name: &str, body: &Value| -> Result<(u16, Value)> {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "60", "--unix-socket"])
            .arg(&socket)
            .args(["-X", "POST", "-H", "Content-Type: application/json"])
            .args(["--data-binary", &body.to_string()])
            .args(["-w", "\n%{http_code}"])
            .arg(format!("http://docker/v1.41/containers/create?name={name}"))
            .output()?;
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let (answer, status) = stdout.rsplit_once('\n').context("no status")?;
        Ok((
            status.trim().parse()?,
            serde_json::from_str(answer).unwrap_or(Value::String(answer.to_string())),
        ))
    };
    let token = |job: u64, project: u64| -> Result<String> {
        let mut claims = issuer.claims(AUDIENCE);
        claims["sub"] = format!("project_path:acme/app-{project}:ref_type:branch:ref:main").into();
        claims["job_id"] = job.to_string().into();
        claims["project_id"] = project.to_string().into();
        claims["exp"] = (chrono_now() + 600).into();
        issuer.current_key().sign(&claims)
    };
    let psql = format!("{}/psql", gateway_e2e::PG_BIN);
    let build = |job: u64, project: u64, token: &str| -> Value {
        serde_json::json!({
            "Image": host.image(),
            "Cmd": [&psql, "-X", "-At", "-v", "ON_ERROR_STOP=1", "-h", host.remote.remote_ip.to_string(),
                    "-U", "agent", "-d", "app", "-c", "select id, email, ssn from users where id = 1"],
            "Labels": gitlab_labels(job, project, "build"),
            "Env": [format!("CI_JOB_ID={job}"), format!("GATEWAY_ID_TOKEN={token}"),
                    "PGPASSFILE=/nonexistent", "PGCONNECT_TIMEOUT=10"],
            "AttachStdout": true, "AttachStderr": true,
            "HostConfig": { "CgroupParent": "/runner-configured-parent", "NetworkMode": "bridge" },
        })
    };
    let (job_a, job_b, job_c) = (1101, 1202, 1303);
    let job_cgroup = |job: u64| format!("/{parent}/gitlab-job-{job}");
    let cgroup_parent_of = |name: &str| -> String {
        let out = host.engine.engine.docker(&[
            "inspect",
            "--format",
            "{{.HostConfig.CgroupParent}}",
            name,
        ]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let jobs = || -> Result<Vec<Value>> {
        Ok(host.daemon.cli_json(&["status", "--json"])?["jobs"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    };
    let job_of = |job: u64| -> Result<Option<Value>> {
        let suffix = format!("/gitlab-job-{job}");
        Ok(jobs()?.into_iter().find(|j| {
            j["cgroup_path"]
                .as_str()
                .is_some_and(|p| p.ends_with(&suffix))
        }))
    };

    // Job A's service, before any token: in job A's cgroup, which is unbound.
    let service = format!("gwe-gl-svc-{id}");
    let (status, answer) = create(
        &service,
        &serde_json::json!({
            "Image": host.image(),
            "Cmd": ["/bin/sleep", "300"],
            "Labels": gitlab_labels(job_a, 11, "service"),
            "Env": ["POSTGRES_DB=app"],
            "HostConfig": { "CgroupParent": "/runner-configured-parent", "NetworkMode": "bridge" },
        }),
    )?;
    assert_eq!(status, 201, "{answer}\n{}", host.daemon.log());
    let out = gateway_docker(&["start", &service]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(cgroup_parent_of(&service), job_cgroup(job_a));
    let unbound = job_of(job_a)?.context("job A's cgroup is no job")?;
    assert_eq!(
        unbound["identity"]["subject"], "unauthenticated",
        "{unbound}"
    );

    // Both jobs' build containers, created and run at once.
    let (name_a, name_b) = (format!("gwe-gl-a-{id}"), format!("gwe-gl-b-{id}"));
    for (name, job, project) in [(&name_a, job_a, 11), (&name_b, job_b, 22)] {
        let (status, answer) = create(name, &build(job, project, &token(job, project)?))?;
        assert_eq!(status, 201, "{answer}\n{}", host.daemon.log());
        assert_eq!(cgroup_parent_of(name), job_cgroup(job));
    }
    let runs: Vec<std::process::Child> = [&name_a, &name_b]
        .iter()
        .map(|name| {
            Command::new("docker")
                .arg("-H")
                .arg(format!("unix://{}", socket.display()))
                .args(["start", "-a", name])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
        })
        .collect::<Result<_, _>>()?;
    let outs: Vec<Output> = runs
        .into_iter()
        .map(|c| c.wait_with_output())
        .collect::<Result<_, _>>()?;
    assert!(
        outs[0].status.success(),
        "{}\n{}",
        text(&outs[0]),
        host.daemon.log()
    );
    assert_eq!(
        String::from_utf8_lossy(&outs[0].stdout).trim(),
        "1|[masked:email]|[masked]"
    );
    assert!(!outs[1].status.success(), "{}", text(&outs[1]));
    let bound_a = job_of(job_a)?.context("job A")?;
    let bound_b = job_of(job_b)?.context("job B")?;
    assert_eq!(
        bound_a["id"], unbound["id"],
        "the service's job was bound, not replaced"
    );
    assert_eq!(bound_a["identity"]["claims"]["job_id"], job_a.to_string());
    assert_eq!(bound_b["identity"]["claims"]["job_id"], job_b.to_string());
    assert_ne!(bound_a["id"], bound_b["id"]);
    let sessions = host.sessions_to("app-db")?;
    assert_eq!(sessions.len(), 2, "{sessions:#?}");
    for (listed, shown) in &sessions {
        let (job, name, decision, rule) = if listed["job_id"] == bound_a["id"] {
            (job_a, &name_a, "allow", "gitlab-jobs-db")
        } else {
            assert_eq!(listed["job_id"], bound_b["id"], "{listed}");
            (job_b, &name_b, "deny", "gitlab-project-22-no-db")
        };
        assert_eq!(listed["decision"], decision, "{listed}");
        assert_eq!(listed["rule"], rule, "{listed}");
        assert_eq!(listed["issuer"], issuer.url.as_str(), "{listed}");
        assert_eq!(shown["claims"]["job_id"], job.to_string(), "{shown}");
        assert_eq!(
            shown["process"]["container"]["id"],
            host.container_id(name)?.as_str(),
            "{shown}"
        );
    }

    // Job C's build container with job A's token: refused, recorded, nothing made for job C.
    let name_c = format!("gwe-gl-c-{id}");
    let (status, answer) = create(&name_c, &build(job_c, 11, &token(job_a, 11)?))?;
    assert_eq!(status, 403, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .is_some_and(|m| m.contains("job_id")),
        "{answer}"
    );
    assert!(job_of(job_c)?.is_none());
    assert!(
        !root
            .join(&parent)
            .join(format!("gitlab-job-{job_c}"))
            .exists()
    );
    // A container without the job's labels: refused.
    let mut unlabelled = build(job_a, 11, &token(job_a, 11)?);
    unlabelled["Labels"] = serde_json::json!({});
    let (status, answer) = create(&format!("gwe-gl-x-{id}"), &unlabelled)?;
    assert_eq!(status, 403, "{answer}");
    assert_eq!(host.container_id(&name_c).ok(), None);
    let refused: Vec<Value> = host
        .docker_requests()?
        .into_iter()
        .map(|(d, _)| d)
        .filter(|d| d["decision"] == "deny")
        .collect();
    assert_eq!(refused.len(), 2, "{refused:#?}");
    let reason_of = |d: &Value| d["reason"].as_str().unwrap_or_default().to_string();
    let job_c_label = job_c.to_string();
    assert!(
        refused
            .iter()
            .any(|d| d["gitlab_job"] == job_c_label.as_str() && reason_of(d).contains("job_id")),
        "{refused:#?}"
    );
    assert!(
        refused
            .iter()
            .any(|d| reason_of(d).contains("com.gitlab.gitlab-runner.job.id")),
        "{refused:#?}"
    );

    // The runner removes job A's containers: its cgroup goes, job B's stays.
    let out = gateway_docker(&["rm", "-f", &service, &name_a]);
    assert!(out.status.success(), "{}", text(&out));
    let a_path = root.join(&parent).join(format!("gitlab-job-{job_a}"));
    let gone = wait_until(Duration::from_secs(30), || {
        !a_path.exists() && job_of(job_a).is_ok_and(|j| j.is_none())
    });
    assert!(gone, "job A's cgroup stayed\n{}", host.daemon.log());
    assert!(job_of(job_b)?.is_some());

    // What the runner types is recorded masked like a job's (its command line, the filter in
    // the path, percent-encoded there), with the detectors of the fixture's masking rule.
    let out = gateway_docker(&[
        "ps",
        "-a",
        "-q",
        "--filter",
        "label=owner=alice@example.com",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let mut runner_masked = false;
    for session in host.daemon.sessions()? {
        if session["protocol"] != "docker" || !session["job_id"].is_null() {
            continue;
        }
        let shown = host.daemon.show_session(&session["id"])?;
        let json = shown.to_string();
        assert!(
            !json.contains("alice@example.com") && !json.contains("alice%40example.com"),
            "{shown:#}"
        );
        runner_masked |= shown["process"]["cmdline"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == "label=owner=[masked:email]"));
    }
    assert!(
        runner_masked,
        "no runner session with its command line masked"
    );
    Ok(())
}
