//! The CI runner hooks (contrib/runner-hooks) against a real daemon and a real OIDC issuer: a fake
//! GitHub runner (a bash named Runner.Worker, an HTTP endpoint serving the job's ID token the way
//! ACTIONS_ID_TOKEN_REQUEST_URL does) and a GitLab shell-executor job.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use anyhow::{Context as _, Result};
use gateway_e2e::{
    Daemon, DaemonConfig, EchoServer, Netns, Process, TempDir, free_port, gateway_bin,
    oidc::{Issuer, Mode},
    probe_bin, unique_id, wait_until,
};
use serde_json::Value;

fn hooks_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("contrib/runner-hooks")
}

struct Runner {
    daemon: Daemon,
    issuer: Issuer,
    ns: Netns,
    dir: TempDir,
    state: PathBuf,
    _echo: EchoServer,
}

impl Runner {
    fn new() -> Result<Runner> {
        let id = unique_id();
        let dir = TempDir::new(&format!("h{id}"));
        let ns = Netns::new(&id)?;
        let echo = EchoServer::start(&ns, dir.path(), &[format!("{}:7000", ns.remote_ip)])?;
        let issuer = Issuer::start(dir.path(), Mode::Real)?;
        let body = format!(
            r#"[[issuers]]
url = "{url}"
audiences = ["https://gateway.test"]
ca_file = "{ca}"

[[targets]]
name = "echo"
protocol = "tcp"
# Through the gateway: the test tells interception by the job's local address.
path = "proxy"
address = "{ip}:7000"

[[rules]]
name = "acme"
action = "allow"
claims = {{ repository = "acme/app" }}
"#,
            url = issuer.url,
            ca = issuer.tls.ca.display(),
            ip = ns.remote_ip,
        );
        let daemon = Daemon::start(DaemonConfig {
            server: String::new(),
            body,
        })?;
        let state = dir.path().join("hook-state");
        Ok(Runner {
            daemon,
            issuer,
            ns,
            dir,
            state,
            _echo: echo,
        })
    }

    fn dst(&self) -> String {
        format!("{}:7000", self.ns.remote_ip)
    }

    /// Environment the hooks get from root's hooks.env on a real host.
    fn hook_env(&self, cmd: &mut Command) {
        cmd.env("GATEWAY", gateway_bin())
            .env("GATEWAY_CONTROL_SOCKET", &self.daemon.control_socket)
            .env("JOB_PARENT", &self.daemon.job_parent)
            .env("HOOK_STATE_DIR", &self.state)
            .env("GATEWAY_HOOKS", hooks_dir())
            .env("PROBE", probe_bin())
            .env("DST", self.dst());
    }

    fn jobs(&self) -> Result<Vec<Value>> {
        Ok(self.daemon.cli_json(&["status", "--json"])?["jobs"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    fn job_cgroups_left(&self) -> usize {
        std::fs::read_dir(self.daemon.job_parent_path())
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .count()
            })
            .unwrap_or(0)
    }
}

fn json_lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Serves `{"value": token}` on http://127.0.0.1:PORT/, like the Actions token endpoint.
fn token_endpoint(dir: &Path, token: &str) -> Result<(Process, String)> {
    let reply = serde_json::json!({ "count": 1, "value": token }).to_string();
    let port = free_port();
    let process = Process::spawn(
        "token-endpoint",
        Command::new("node")
            .arg("-e")
            .arg(
                "const [reply, port] = process.argv.slice(1); \
                 require('http').createServer((q, s) => s.end(reply)).listen(Number(port), '127.0.0.1')",
            )
            .arg(&reply)
            .arg(port.to_string()),
        dir.join("token-endpoint.log"),
    )?;
    let up = wait_until(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    anyhow::ensure!(up, "token endpoint did not start: {}", process.output());
    Ok((
        process,
        format!("http://127.0.0.1:{port}/token?api-version=2.0"),
    ))
}

#[test]
fn github_hooks_bind_the_runner_worker_for_the_job_and_release_it_after() -> Result<()> {
    let r = Runner::new()?;
    let (_endpoint, url) = token_endpoint(r.dir.path(), &r.issuer.client_token("ci-app")?)?;
    // The runner's job process: a bash whose comm is Runner.Worker, running the hooks like the
    // real runner, and job steps in between.
    let worker = r.dir.path().join("Runner.Worker");
    std::fs::copy("/bin/bash", &worker)?;
    let script = r#"
        set -u
        "$GATEWAY_HOOKS/github-job-started.sh" || exit 10
        "$PROBE" connect "$DST" during                       # a job step
        . "$GATEWAY_HOOKS/github-common.sh"
        # An agent (not a shell) calling the helper itself to end interception is refused.
        node -e 'const r = require("child_process").spawnSync(process.argv[1], process.argv.slice(2), { stdio: "inherit" }); process.exit(r.status)' \
            "$GATEWAY_HOOKS/gateway-hook" detach "$(job_key)" 2>"$OUT/agent-detach.err" && exit 11
        "$PROBE" connect "$DST" still                        # still intercepted
        "$GATEWAY_HOOKS/github-job-completed.sh" || exit 12
        "$PROBE" connect "$DST" after                        # the worker is released
    "#;
    let mut cmd = Command::new(&worker);
    cmd.args(["-c", script])
        .env("ACTIONS_ID_TOKEN_REQUEST_URL", &url)
        .env("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "runtime-token")
        .env("GATEWAY_OIDC_AUDIENCE", "https://gateway.test")
        .env("GITHUB_RUN_ID", "4242")
        .env("GITHUB_RUN_ATTEMPT", "1")
        .env("OUT", r.dir.path());
    r.hook_env(&mut cmd);
    let out = cmd.output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}\n{}", r.daemon.log());
    let probes = json_lines(&out);
    assert_eq!(probes.len(), 3, "{probes:?}");
    for (v, text) in probes[..2].iter().zip(["during", "still"]) {
        assert_eq!(v["echo"], text, "{v}");
        assert!(
            v["local"].as_str().unwrap().starts_with("127.0.0.1:"),
            "intercepted: {v}"
        );
    }
    assert_eq!(probes[2]["echo"], "after");
    assert!(
        !probes[2]["local"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "not intercepted after the job: {}",
        probes[2]
    );
    let refused = std::fs::read_to_string(r.dir.path().join("agent-detach.err"))?;
    assert!(refused.contains("is not a shell"), "{refused}");

    let sessions = r.daemon.sessions()?;
    assert_eq!(sessions.len(), 2, "{sessions:?}");
    for s in &sessions {
        assert_eq!(s["identity"], "ci-app", "{s}");
        assert_eq!(s["decision"], "allow", "{s}");
    }
    assert!(r.jobs()?.is_empty(), "the job is unbound");
    assert_eq!(r.job_cgroups_left(), 0, "the job cgroup is removed");
    Ok(())
}

#[test]
fn github_hook_fails_the_job_when_the_gateway_refuses_its_token() -> Result<()> {
    let r = Runner::new()?;
    let (_endpoint, url) = token_endpoint(r.dir.path(), "not-a.valid.token")?;
    let worker = r.dir.path().join("Runner.Worker");
    std::fs::copy("/bin/bash", &worker)?;
    let mut cmd = Command::new(&worker);
    // Two commands, so that bash does not exec the hook in place of the "worker".
    cmd.args(["-c", "\"$GATEWAY_HOOKS/github-job-started.sh\"; exit $?"])
        .env("ACTIONS_ID_TOKEN_REQUEST_URL", &url)
        .env("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "runtime-token")
        .env("GITHUB_RUN_ID", "4243");
    r.hook_env(&mut cmd);
    let out = cmd.output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("token rejected"), "{stderr}");
    assert!(stderr.contains("not running it unintercepted"), "{stderr}");
    assert!(r.jobs()?.is_empty());
    assert_eq!(r.job_cgroups_left(), 0);
    Ok(())
}

#[test]
fn gitlab_hooks_bind_the_job_shell_with_its_id_token() -> Result<()> {
    let r = Runner::new()?;
    let token = r.issuer.client_token("ci-app")?;
    let fork = r.issuer.client_token("ci-fork")?;
    let script = r#"
        . "$GATEWAY_HOOKS/gitlab-pre-build.sh"
        "$PROBE" connect "$DST" job
        . "$GATEWAY_HOOKS/gitlab-post-build.sh"
    "#;
    let run = |job: &str, token: &str| -> Result<Output> {
        let mut cmd = Command::new("bash");
        cmd.args(["-c", script])
            .env("CI_JOB_ID", job)
            .env("GATEWAY_ID_TOKEN", token);
        r.hook_env(&mut cmd);
        cmd.output().context("job shell")
    };
    let out = run("9001", &token)?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = &json_lines(&out)[0];
    assert_eq!(v["echo"], "job", "{v}");
    // Same job script from a fork: bound to its own identity, which the rules refuse.
    let out = run("9002", &fork)?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = &json_lines(&out)[0];
    assert_ne!(v["echo"], "job", "the fork's job reached the target: {v}");

    let sessions = r.daemon.sessions()?;
    assert_eq!(sessions.len(), 2, "{sessions:?}");
    assert_eq!(sessions[0]["identity"], "ci-app");
    assert_eq!(sessions[0]["decision"], "allow");
    assert_eq!(sessions[1]["identity"], "ci-fork");
    assert_eq!(sessions[1]["decision"], "deny");
    assert!(r.jobs()?.is_empty());
    assert_eq!(r.job_cgroups_left(), 0);
    Ok(())
}
