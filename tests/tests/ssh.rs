//! SSH at Layer 7 with real peers: Debian's sshd in a network namespace, the OpenSSH client in an
//! intercepted job (`gateway run -- ssh …`) checking the gateway's host key strictly.

use std::{
    fs,
    io::{BufRead as _, BufReader, Write as _},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};
use gateway_e2e::{
    Daemon, DaemonConfig, Netns, TempDir, gateway_bin,
    ssh::{Sshd, SshdOptions, TestUser, client_options, keygen},
    sshraw_bin, unique_id, wait_until,
};
use serde_json::Value;

const RULES: &str = r#"
[[rules]]
name = "no-shutdown"
action = "deny"
targets = ["web"]
unauthenticated = true
reason = "shutting hosts down is not for CI jobs"
[rules.ssh]
commands = ["*shutdown*"]

[[rules]]
name = "restarts-need-approval"
action = "require_approval"
targets = ["web"]
unauthenticated = true
approvers = ["ops"]
[rules.ssh]
commands = ["*systemctl restart *"]

[[rules]]
name = "etc-is-read-only"
action = "deny"
targets = ["web"]
unauthenticated = true
[rules.ssh]
operations = ["sftp_write", "sftp_delete"]
paths = ["/etc/*"]

[[rules]]
name = "held-uploads-need-approval"
action = "require_approval"
targets = ["web"]
unauthenticated = true
approvers = ["ops"]
[rules.ssh]
operations = ["sftp_write"]
paths = ["/tmp/gwe-held-*"]

[[rules]]
name = "forward-to-the-host-itself"
action = "allow"
targets = ["web"]
unauthenticated = true
[rules.ssh]
operations = ["forward"]
destinations = ["{HOST}:22"]

[[rules]]
name = "reverse-tunnel-on-the-host-loopback"
action = "allow"
targets = ["web"]
unauthenticated = true
[rules.ssh]
operations = ["remote_forward"]
destinations = ["127.0.0.1:17001"]

[[rules]]
name = "jobs-may-ssh"
action = "allow"
targets = ["web"]
unauthenticated = true

[[approvers]]
name = "ops"
unix_users = ["root"]
"#;

/// A host in a namespace with sshd, a gateway with an SSH target for it, and a known_hosts file
/// holding the gateway's line (the runner image's one trust step).
struct Setup {
    daemon: Daemon,
    sshd: Sshd,
    known_hosts: PathBuf,
    dir: TempDir,
    _ns: Netns,
}

impl Setup {
    fn new(server: &str, target_extra: &str) -> Result<Setup> {
        Self::with_rules(server, target_extra, RULES)
    }

    /// A setup with rules of its own: `{HOST}` in them is the host's address, `{DIR}` the test's
    /// directory (also on the host: the namespace shares the file system).
    fn with_rules(server: &str, target_extra: &str, rules: &str) -> Result<Setup> {
        let id = unique_id();
        let dir = TempDir::new(&format!("ssh{id}"));
        let ns = Netns::new(&id)?;
        let sshd = Sshd::start(&ns, dir.path())?;
        let body = format!(
            "{}\n{}",
            sshd.target("web", target_extra),
            rules
                .replace("{HOST}", &sshd.addr.to_string())
                .replace("{DIR}", &dir.path().display().to_string())
        );
        let daemon = Daemon::start(DaemonConfig {
            server: server.to_string(),
            body,
        })?;
        let known_hosts = dir.path().join("known_hosts");
        let lines = known_hosts_lines(&daemon)?;
        fs::write(&known_hosts, &lines)?;
        Ok(Setup {
            daemon,
            sshd,
            known_hosts,
            dir,
            _ns: ns,
        })
    }

    fn host(&self) -> String {
        format!("root@{}", self.sshd.addr)
    }

    /// Runs an OpenSSH tool as a job with the job's client options.
    fn job(&self, tool: &str, args: &[&str]) -> Output {
        let mut all = client_options(&self.known_hosts);
        all.extend(args.iter().map(|s| s.to_string()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        self.daemon.run_job(&[], tool, &all)
    }

    fn ssh(&self, args: &[&str]) -> Output {
        let host = self.host();
        let mut all = args.to_vec();
        all.insert(0, &host);
        // Options must come before the destination.
        let (opts, rest): (Vec<&str>, Vec<&str>) = (Vec::new(), all);
        let mut v = opts;
        v.extend(rest);
        self.job("ssh", &v)
    }

    fn ssh_sessions(&self) -> Result<Vec<Value>> {
        Ok(self
            .daemon
            .sessions()?
            .into_iter()
            .filter(|s| s["protocol"] == "ssh")
            .collect())
    }

    /// Events of the newest SSH session once it has ended.
    fn last_session(&self) -> Result<Value> {
        let mut shown = Value::Null;
        let ended = wait_until(Duration::from_secs(10), || {
            let Some(id) = self
                .ssh_sessions()
                .ok()
                .and_then(|l| l.last().and_then(|s| s["id"].as_i64()))
            else {
                return false;
            };
            shown = self.daemon.show_session(id).unwrap_or(Value::Null);
            shown["ended_at"].is_string()
                && shown["events"]
                    .as_array()
                    .is_some_and(|e| e.iter().any(|e| e["kind"] == "closed"))
        });
        ensure!(ended, "no ended ssh session: {shown}");
        Ok(shown)
    }
}

fn known_hosts_lines(daemon: &Daemon) -> Result<String> {
    let out = Command::new(gateway_bin())
        .arg("--config")
        .arg(&daemon.config_path)
        .args(["targets", "known-hosts"])
        .output()?;
    ensure!(
        out.status.success(),
        "known-hosts: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn events<'a>(session: &'a Value, kind: &str) -> Vec<&'a Value> {
    session["events"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|e| e["kind"] == kind)
                .map(|e| &e["detail"])
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn exec_is_decided_recorded_and_exit_status_passes_through() -> Result<()> {
    let s = Setup::new("", "env = [\"LC_*\"]")?;
    let line = fs::read_to_string(&s.known_hosts)?;
    assert!(
        line.starts_with(&format!("{} ssh-ed25519 ", s.sshd.addr)),
        "{line}"
    );

    // Allowed: output and the exact exit status come back; the job needed no key.
    let out = s.ssh(&["echo hi; echo oops >&2; exit 3"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hi\n");
    assert_eq!(text(&out.stderr), "oops\n");
    let session = s.last_session()?;
    assert_eq!(session["target"], "web");
    let exec = events(&session, "ssh_exec");
    assert_eq!(exec[0]["command"], "echo hi; echo oops >&2; exit 3");
    assert_eq!(exec[0]["decision"], "allow");
    let end = events(&session, "ssh_channel_end");
    assert_eq!(end[0]["exit_status"], 3, "{session}");
    assert_eq!(end[0]["stdout"], "hi\n");
    assert_eq!(end[0]["stderr"], "oops\n");

    // Denied: the command never reaches the host; the reason is on stderr.
    let marker = format!("/tmp/gwe-denied-{}", unique_id());
    let out = s.ssh(&[&format!("touch {marker}; sudo shutdown -h now")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = text(&out.stderr);
    assert!(
        err.contains("refused by policy: shutting hosts down is not for CI jobs"),
        "{err}"
    );
    assert!(!Path::new(&marker).exists(), "the denied command ran");
    let session = s.last_session()?;
    assert_eq!(events(&session, "ssh_exec")[0]["decision"], "deny");
    assert_eq!(events(&session, "ssh_exec")[0]["rule"], "no-shutdown");

    // Held for approval: the exec waits, the job reads which request it waits for on stderr;
    // someone outside the job approves it and it runs, or denies it and it never does.
    let approve_marker = format!("/tmp/gwe-approved-{}", unique_id());
    for (verdict, marker) in [("approve", &approve_marker), ("deny", &marker)] {
        let command = format!("touch {marker}; echo systemctl restart app");
        let job = spawn_job(&s, 60, "ssh", &[&s.host(), &command], Stdio::null())?;
        let id = pending_approval(&s, &command)?;
        assert!(!Path::new(marker).exists(), "ran before approval");
        let decided = s.daemon.cli(
            &["approvals", verdict, &id, "--reason", "not now"]
                [..if verdict == "deny" { 5 } else { 3 }],
        );
        assert!(decided.status.success(), "{}", text(&decided.stderr));
        let out = job.wait_with_output()?;
        let err = text(&out.stderr);
        assert!(err.contains(&held_notice(&id)), "{err}");
        if verdict == "approve" {
            assert_eq!(out.status.code(), Some(0), "{err}");
            assert_eq!(text(&out.stdout), "systemctl restart app\n");
            assert!(
                Path::new(marker).exists(),
                "the approved command did not run"
            );
        } else {
            assert_eq!(out.status.code(), Some(1), "{err}");
            assert!(
                err.contains("gateway: denied: ") && err.contains("not now"),
                "{err}"
            );
            assert!(!Path::new(marker).exists(), "the denied command ran");
        }
        let session = s.last_session()?;
        assert_eq!(
            events(&session, "ssh_exec")[0]["decision"],
            "require_approval"
        );
        let outcome = &events(&session, "ssh_approval")[0]["outcome"]["outcome"];
        assert_eq!(
            *outcome,
            if verdict == "approve" {
                "approved"
            } else {
                "denied"
            }
        );
    }
    let _ = fs::remove_file(&approve_marker);

    // Output is recorded masked; the job itself sees what the host printed.
    let key = "AKIAIOSFODNN7EXAMPLE";
    let out = s.ssh(&[&format!("echo key={key}")]);
    assert_eq!(text(&out.stdout), format!("key={key}\n"));
    let session = s.last_session()?;
    let end = events(&session, "ssh_channel_end");
    assert_eq!(
        end[0]["stdout"], "key=[masked:aws_access_key]\n",
        "{session}"
    );
    assert_eq!(
        events(&session, "ssh_exec")[0]["command"],
        "echo key=[masked:aws_access_key]"
    );

    // Environment: allow-listed names pass, others do not (the host would accept both).
    let mut opts = client_options(&s.known_hosts);
    opts.extend(
        [
            "-o",
            "SendEnv=LC_GWE GWE_SECRET",
            &s.host(),
            "printenv LC_GWE GWE_SECRET",
        ]
        .map(String::from),
    );
    let opts: Vec<&str> = opts.iter().map(String::as_str).collect();
    let out = Command::new(gateway_bin())
        .arg("--control-socket")
        .arg(&s.daemon.control_socket)
        .args(["run", "--", "ssh"])
        .args(&opts)
        .env("LC_GWE", "passed")
        .env("GWE_SECRET", "leaked")
        .output()?;
    assert_eq!(text(&out.stdout), "passed\n", "{}", text(&out.stderr));

    // A shell without a terminal reads commands from stdin: each line is decided before it is
    // passed on, a denied one is dropped and the rest run.
    let script = s.dir.path().join("script.sh");
    fs::write(
        &script,
        format!("echo one\ntouch {marker}; echo shutdown now\necho two\n"),
    )?;
    let mut opts = client_options(&s.known_hosts);
    opts.extend(["-T".into(), s.host()]);
    let out = Command::new(gateway_bin())
        .arg("--control-socket")
        .arg(&s.daemon.control_socket)
        .args(["run", "--", "ssh"])
        .args(&opts)
        .stdin(fs::File::open(&script)?)
        .output()?;
    assert_eq!(text(&out.stdout), "one\ntwo\n", "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("blocked by policy"),
        "{}",
        text(&out.stderr)
    );
    assert!(!Path::new(&marker).exists(), "the blocked line ran");

    // stdin reaches the host intact and EOF ends it.
    let data = s.dir.path().join("stdin.bin");
    fs::write(
        &data,
        (0..3_000_000u32)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>(),
    )?;
    let mut opts = client_options(&s.known_hosts);
    opts.extend([s.host(), "sha256sum".into()]);
    let out = Command::new(gateway_bin())
        .arg("--control-socket")
        .arg(&s.daemon.control_socket)
        .args(["run", "--", "ssh"])
        .args(&opts)
        .stdin(fs::File::open(&data)?)
        .output()?;
    let local = Command::new("sha256sum").arg(&data).output()?;
    assert_eq!(
        text(&out.stdout).split_whitespace().next(),
        text(&local.stdout).split_whitespace().next()
    );
    Ok(())
}

#[test]
fn scp_and_sftp_transfer_and_sftp_operations_are_policed() -> Result<()> {
    let s = Setup::new("", "")?;
    let local = s.dir.path().join("up.bin");
    fs::write(
        &local,
        (0..5_000_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect::<Vec<u8>>(),
    )?;
    let remote = format!("/tmp/gwe-scp-{}", unique_id());
    // Upload (scp speaks sftp), then download it again under another name.
    let out = s.job(
        "scp",
        &[local.to_str().unwrap(), &format!("{}:{remote}", s.host())],
    );
    assert!(out.status.success(), "scp up: {}", text(&out.stderr));
    let back = s.dir.path().join("down.bin");
    let out = s.job(
        "scp",
        &[&format!("{}:{remote}", s.host()), back.to_str().unwrap()],
    );
    assert!(out.status.success(), "scp down: {}", text(&out.stderr));
    assert_eq!(fs::read(&local)?, fs::read(&back)?);
    assert_eq!(
        fs::read(&remote)?.len(),
        5_000_000,
        "the file is on the host"
    );
    let session = s.last_session()?;
    let files = events(&session, "ssh_sftp_file");
    assert!(
        files
            .iter()
            .any(|f| f["path"] == remote.as_str() && f["bytes_read"] == 5_000_000),
        "{session}"
    );

    // sftp: listing works, writing under /etc is refused by policy, the rest of the batch
    // is not run (sftp -b stops at the first failure).
    let batch = s.dir.path().join("batch");
    fs::write(
        &batch,
        format!(
            "ls -l {remote}\nput {} /etc/gwe-forbidden\n",
            local.display()
        ),
    )?;
    let out = s.job("sftp", &["-b", batch.to_str().unwrap(), &s.host()]);
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(all.contains("5000000"), "{all}");
    assert_ne!(out.status.code(), Some(0), "{all}");
    assert!(
        all.contains("gateway:") || all.contains("ermission denied"),
        "{all}"
    );
    assert!(!Path::new("/etc/gwe-forbidden").exists());
    let session = s.last_session()?;
    let refused: Vec<_> = events(&session, "ssh_sftp")
        .into_iter()
        .filter(|e| e["decision"] == "deny")
        .collect();
    assert_eq!(refused[0]["path"], "/etc/gwe-forbidden", "{session}");
    assert_eq!(refused[0]["rule"], "etc-is-read-only");
    // Legacy scp (an exec of `scp -t PATH` on the host) is held to the same path rules.
    let out = s.job(
        "scp",
        &[
            "-O",
            local.to_str().unwrap(),
            &format!("{}:/etc/gwe-forbidden", s.host()),
        ],
    );
    assert_ne!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("etc-is-read-only") || text(&out.stderr).contains("gateway"),
        "{}",
        text(&out.stderr)
    );
    assert!(!Path::new("/etc/gwe-forbidden").exists());
    let legacy = format!("{remote}-legacy");
    let out = s.job(
        "scp",
        &[
            "-O",
            local.to_str().unwrap(),
            &format!("{}:{legacy}", s.host()),
        ],
    );
    assert!(out.status.success(), "scp -O: {}", text(&out.stderr));
    assert_eq!(fs::read(&legacy)?, fs::read(&local)?);
    let _ = fs::remove_file(&legacy);

    // Full duplex: the host sends a file while the job sends one, both as fast as they can (a
    // relay that only blocks the job's socket deadlocks here; see `bridge`).
    let mut opts = client_options(&s.known_hosts);
    let zeros = s.dir.path().join("zeros.bin");
    fs::write(&zeros, vec![0u8; 64 << 20])?;
    opts.extend([
        s.host(),
        "head -c 67108864 /dev/zero & cat > /dev/null; wait".into(),
    ]);
    let out = Command::new(gateway_bin())
        .arg("--control-socket")
        .arg(&s.daemon.control_socket)
        .args(["run", "--", "timeout", "120", "ssh"])
        .args(&opts)
        .stdin(fs::File::open(&zeros)?)
        .output()?;
    assert_eq!(out.stdout.len(), 64 << 20, "{}", text(&out.stderr));
    let _ = fs::remove_file(&remote);
    Ok(())
}

/// What the job is told while its command or line waits for request `id` of the restart rule.
fn held_notice(id: &str) -> String {
    format!("needs approval (rule \"restarts-need-approval\"): request {id}")
}

/// A job started in the background (bounded by `timeout` inside the job), for the approvals a
/// test decides while it waits.
fn spawn_job(
    s: &Setup,
    seconds: u32,
    tool: &str,
    args: &[&str],
    stdin: Stdio,
) -> Result<std::process::Child> {
    let mut opts = client_options(&s.known_hosts);
    opts.extend(args.iter().map(|a| a.to_string()));
    Ok(Command::new(gateway_bin())
        .arg("--control-socket")
        .arg(&s.daemon.control_socket)
        .args(["run", "--", "timeout", &seconds.to_string(), tool])
        .args(&opts)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?)
}

/// The approval requests whose operation is `operation`.
fn approvals_for(s: &Setup, operation: &str) -> Vec<Value> {
    s.daemon
        .cli_json(&["approvals", "list", "--json"])
        .ok()
        .and_then(|l| l.as_array().cloned())
        .unwrap_or_default()
        .into_iter()
        .filter(|a| a["operation"] == operation)
        .collect()
}

/// Waits for a pending request for `operation`; its id.
fn pending_approval(s: &Setup, operation: &str) -> Result<String> {
    let mut id = None;
    let found = wait_until(Duration::from_secs(20), || {
        id = approvals_for(s, operation)
            .into_iter()
            .find(|a| a["status"] == "pending")
            .and_then(|a| a["id"].as_str().map(str::to_string));
        id.is_some()
    });
    ensure!(found, "no pending approval for {operation:?}");
    Ok(id.unwrap_or_default())
}

#[test]
fn sftp_operations_needing_approval_wait_for_the_decision() -> Result<()> {
    let s = Setup::new("", "")?;
    let local = s.dir.path().join("held.bin");
    let content: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    fs::write(&local, &content)?;
    let base = format!("/tmp/gwe-held-{}", unique_id());
    let put = |name: &str| -> Result<(String, std::process::Child)> {
        let remote = format!("{base}-{name}");
        let batch = s.dir.path().join(format!("batch-{name}"));
        fs::write(
            &batch,
            format!("put {} {remote}\nls -l {remote}\n", local.display()),
        )?;
        let child = spawn_job(
            &s,
            60,
            "sftp",
            &["-b", batch.to_str().unwrap(), &s.host()],
            Stdio::null(),
        )?;
        Ok((remote, child))
    };

    // Approved: the upload waits (nothing reaches the host), then goes through and is answered.
    let (remote, job) = put("approved")?;
    let id = pending_approval(&s, &format!("sftp write {remote}"))?;
    std::thread::sleep(Duration::from_millis(500));
    assert!(!Path::new(&remote).exists(), "written before approval");
    let out = s.daemon.cli(&["approvals", "approve", &id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = job.wait_with_output()?;
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}{}", text(&out.stdout));
    assert!(
        err.contains(&format!(
            "gateway: \"sftp write {remote}\" needs approval (rule \"held-uploads-need-approval\"): \
             request {id}; approve with `gateway approvals approve {id}`"
        )),
        "{err}"
    );
    assert!(err.contains("gateway: approved by root"), "{err}");
    assert_eq!(
        fs::read(&remote)?,
        content,
        "the approved upload is on the host"
    );
    let session = s.last_session()?;
    let held: Vec<_> = events(&session, "ssh_sftp")
        .into_iter()
        .filter(|e| e["decision"] == "require_approval")
        .collect();
    assert_eq!(held.len(), 1, "{session}");
    assert_eq!(held[0]["rule"], "held-uploads-need-approval");
    assert_eq!(held[0]["operation"], format!("sftp write {remote}"));
    let approval = events(&session, "ssh_approval");
    assert_eq!(approval[0]["outcome"]["outcome"], "approved", "{session}");
    assert_eq!(approval[0]["kind"], "sftp");
    assert!(
        events(&session, "ssh_sftp_file")
            .iter()
            .any(|f| f["path"] == remote.as_str() && f["bytes_written"] == content.len()),
        "{session}"
    );
    let _ = fs::remove_file(&remote);

    // Denied: the job gets "permission denied" and reads the reason; nothing is written.
    let (remote, job) = put("denied")?;
    let id = pending_approval(&s, &format!("sftp write {remote}"))?;
    let out = s
        .daemon
        .cli(&["approvals", "deny", &id, "--reason", "not this file"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = job.wait_with_output()?;
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert_ne!(out.status.code(), Some(0), "{all}");
    assert!(all.contains("ermission denied"), "{all}");
    assert!(
        all.contains("gateway: denied: ") && all.contains("not this file"),
        "{all}"
    );
    assert!(
        !Path::new(&remote).exists(),
        "the denied upload was written"
    );
    let session = s.last_session()?;
    assert_eq!(
        events(&session, "ssh_approval")[0]["outcome"]["outcome"],
        "denied",
        "{session}"
    );

    // A job that gives up while waiting abandons its request; nothing is written.
    let (remote, job) = {
        let remote = format!("{base}-abandoned");
        let batch = s.dir.path().join("batch-abandoned");
        fs::write(&batch, format!("put {} {remote}\n", local.display()))?;
        (
            remote,
            spawn_job(
                &s,
                6,
                "sftp",
                &["-b", batch.to_str().unwrap(), &s.host()],
                Stdio::null(),
            )?,
        )
    };
    let operation = format!("sftp write {remote}");
    pending_approval(&s, &operation)?;
    let out = job.wait_with_output()?;
    assert_ne!(out.status.code(), Some(0));
    let abandoned = wait_until(Duration::from_secs(10), || {
        approvals_for(&s, &operation)
            .iter()
            .any(|a| a["status"] == "abandoned")
    });
    assert!(abandoned, "{:?}", approvals_for(&s, &operation));
    assert!(!Path::new(&remote).exists());
    // No standing approval for an unauthenticated job (every such job shares the identity):
    // `--for` is refused, and the next write asks again.
    let (first, job) = put("granted")?;
    let id = pending_approval(&s, &format!("sftp write {first}"))?;
    let out = s.daemon.cli(&["approvals", "approve", &id, "--for", "10m"]);
    assert!(
        !out.status.success() && text(&out.stderr).contains("unauthenticated"),
        "{}",
        text(&out.stderr)
    );
    let out = s.daemon.cli(&["approvals", "approve", &id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = job.wait_with_output()?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let (second, job) = put("granted-again")?;
    let again = pending_approval(&s, &format!("sftp write {second}"))?;
    let out = s.daemon.cli(&["approvals", "approve", &again]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = job.wait_with_output()?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(fs::read(&second)?, content);
    let _ = fs::remove_file(&first);
    let _ = fs::remove_file(&second);

    Ok(())
}

#[test]
fn a_script_line_needing_approval_waits_for_the_decision() -> Result<()> {
    let s = Setup::new("", "")?;
    let marker = format!("/tmp/gwe-script-{}", unique_id());
    let held = format!("touch {marker}; echo systemctl restart app");
    for verdict in ["approve", "deny"] {
        let script = s.dir.path().join(format!("script-{verdict}.sh"));
        fs::write(&script, format!("echo one\n{held}\necho two\n"))?;
        let job = spawn_job(
            &s,
            60,
            "ssh",
            &["-T", &s.host()],
            fs::File::open(&script)?.into(),
        )?;
        let id = pending_approval(&s, &held)?;
        assert!(!Path::new(&marker).exists(), "ran before approval");
        let out = s.daemon.cli(&["approvals", verdict, &id]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let out = job.wait_with_output()?;
        let err = text(&out.stderr);
        assert!(err.contains(&held_notice(&id)), "{err}");
        if verdict == "approve" {
            assert_eq!(
                text(&out.stdout),
                "one\nsystemctl restart app\ntwo\n",
                "{err}"
            );
            assert!(Path::new(&marker).exists(), "the approved line did not run");
            fs::remove_file(&marker)?;
        } else {
            assert_eq!(text(&out.stdout), "one\ntwo\n", "{err}");
            assert!(err.contains("gateway: denied: "), "{err}");
            assert!(!Path::new(&marker).exists(), "the denied line ran");
        }
    }
    Ok(())
}

#[test]
fn a_full_disk_runs_no_shell_line_unrecorded() -> Result<()> {
    // A shell session open before the recording disk fills up: each line is recorded before it is
    // sent, so once nothing can be recorded no line reaches the host.
    let mut s = Setup::new("", "")?;
    let disk = s.daemon.restart_on_small_disk("4m")?;
    // A fresh state directory: the gateway made itself new host keys.
    fs::write(&s.known_hosts, known_hosts_lines(&s.daemon)?)?;
    let base = format!("/tmp/gwe-full-{}", unique_id());
    let mut job = spawn_job(&s, 60, "ssh", &["-T", &s.host()], Stdio::piped())?;
    let mut stdin = job.stdin.take().context("ssh stdin")?;
    writeln!(stdin, "touch {base}-before")?;
    ensure!(
        wait_until(Duration::from_secs(20), || Path::new(&format!(
            "{base}-before"
        ))
        .exists()),
        "the shell did not start"
    );

    disk.fill()?;
    for i in 0..20 {
        writeln!(stdin, "touch {base}-during-{i}")?;
    }
    drop(stdin);
    let out = job.wait_with_output()?;
    let ran: Vec<usize> = (0..20)
        .filter(|i| Path::new(&format!("{base}-during-{i}")).exists())
        .collect();
    // The journal's last page may still hold a record or two; the lines after it are refused.
    assert!(ran.len() < 20, "all 20 lines ran with a full disk");
    assert!(
        text(&out.stderr).contains("not sent: the gateway cannot record it"),
        "{}",
        text(&out.stderr)
    );

    disk.free()?;
    // Every line that ran is in the record.
    let recorded = || {
        s.ssh_sessions().map_or(0, |sessions| {
            sessions
                .iter()
                .filter_map(|x| s.daemon.show_session(&x["id"]).ok())
                .flat_map(|shown| shown["events"].as_array().cloned().unwrap_or_default())
                .filter(|e| {
                    e["kind"] == "ssh_shell_line"
                        && e["detail"]["decision"] == "allow"
                        && e["detail"]["line"]
                            .as_str()
                            .is_some_and(|l| l.contains("-during-"))
                })
                .count()
        })
    };
    assert!(
        wait_until(Duration::from_secs(10), || recorded() >= ran.len()),
        "{} lines ran, {} recorded",
        ran.len(),
        recorded()
    );
    for i in ran {
        let _ = fs::remove_file(format!("{base}-during-{i}"));
    }
    let _ = fs::remove_file(format!("{base}-before"));
    drop(disk);
    Ok(())
}

/// A tmux server of the test's own (own socket), killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn cmd(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()?;
        Ok(text(&out.stdout))
    }

    fn screen(&self) -> String {
        // -J: a wrapped line reads as one.
        self.cmd(&["capture-pane", "-p", "-J", "-t", "gwe"])
            .unwrap_or_default()
    }

    fn wait_for(&self, what: &str) -> Result<()> {
        let found = wait_until(Duration::from_secs(20), || self.screen().contains(what));
        ensure!(found, "{what:?} not on screen:\n{}", self.screen());
        Ok(())
    }

    /// Waits for `what` and then for the shell's prompt after it. Keys typed before the shell
    /// reads its next line wait in the terminal's own line buffer (typeahead), which the
    /// gateway's discard of a blocked line does not reach: the threat model's "keystrokes, not
    /// the shell's buffer". The test types as a person at the prompt does.
    fn wait_for_prompt_after(&self, what: &str) -> Result<()> {
        let ready = |screen: &str| {
            screen.rfind(what).is_some_and(|at| {
                screen[at..].lines().skip(1).any(|l| {
                    let l = l.trim_end();
                    l.ends_with('#') || l.ends_with('$')
                })
            })
        };
        let found = wait_until(Duration::from_secs(20), || ready(&self.screen()));
        ensure!(
            found,
            "{what:?} and a prompt after it not on screen:\n{}",
            self.screen()
        );
        Ok(())
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

#[test]
fn interactive_shell_is_recorded_lines_are_policed_and_replayed() -> Result<()> {
    let s = Setup::new("", "")?;
    let tmux = Tmux {
        socket: format!("gwe-{}", unique_id()),
    };
    let rc_file = s.dir.path().join("rc");
    let mut ssh = vec![
        gateway_bin().display().to_string(),
        "--control-socket".into(),
        s.daemon.control_socket.display().to_string(),
        "run".into(),
        "--".into(),
        "ssh".into(),
    ];
    ssh.extend(client_options(&s.known_hosts));
    ssh.extend(["-tt".into(), s.host()]);
    let shell_cmd = format!(
        "{}; echo RC=$? > {}; sleep 60",
        ssh.join(" "),
        rc_file.display()
    );
    tmux.cmd(&[
        "new-session",
        "-d",
        "-s",
        "gwe",
        "-x",
        "100",
        "-y",
        "30",
        &shell_cmd,
    ])?;
    tmux.cmd(&["send-keys", "-t", "gwe", "printf 'hello-%d\\n' 42", "Enter"])?;
    tmux.wait_for_prompt_after("hello-42")?;
    tmux.cmd(&["send-keys", "-t", "gwe", "stty size", "Enter"])?;
    tmux.wait_for_prompt_after("30 100")?;
    tmux.cmd(&["resize-window", "-t", "gwe", "-x", "132", "-y", "40"])?;
    tmux.cmd(&["send-keys", "-t", "gwe", "stty size", "Enter"])?;
    tmux.wait_for_prompt_after("40 132")?;
    // A high-risk line is blocked before it reaches the host.
    let marker = format!("/tmp/gwe-shell-{}", unique_id());
    tmux.cmd(&[
        "send-keys",
        "-t",
        "gwe",
        &format!("touch {marker}; echo shutdown-now"),
        "Enter",
    ])?;
    tmux.wait_for_prompt_after("gateway: blocked by policy")?;
    tmux.cmd(&["send-keys", "-t", "gwe", "printf 'after-%d\\n' 2", "Enter"])?;
    tmux.wait_for_prompt_after("after-2")?;
    assert!(!Path::new(&marker).exists(), "the blocked line ran");
    // A line needing approval waits at Enter; the terminal names the request. Approved, it runs.
    let held = format!("touch {marker}; printf 'systemctl restart held-%d\\n' 5");
    tmux.cmd(&["send-keys", "-t", "gwe", &held, "Enter"])?;
    let id = pending_approval(&s, &held)?;
    tmux.wait_for(&held_notice(&id))?;
    // Typed while waiting: runs after the held line, not before.
    tmux.cmd(&[
        "send-keys",
        "-t",
        "gwe",
        "printf 'typed-ahead-%d\\n' 7",
        "Enter",
    ])?;
    std::thread::sleep(Duration::from_millis(500));
    assert!(!Path::new(&marker).exists(), "ran before approval");
    assert!(
        !tmux.screen().contains("typed-ahead-7"),
        "{}",
        tmux.screen()
    );
    let out = s.daemon.cli(&["approvals", "approve", &id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    tmux.wait_for("restart held-5")?;
    tmux.wait_for("typed-ahead-7")?;
    assert!(Path::new(&marker).exists(), "the approved line did not run");
    fs::remove_file(&marker)?;
    // Ctrl-C while waiting withdraws the request; the line never runs.
    let withdrawn = format!("touch {marker}; echo systemctl restart withdrawn");
    tmux.cmd(&["send-keys", "-t", "gwe", &withdrawn, "Enter"])?;
    pending_approval(&s, &withdrawn)?;
    tmux.cmd(&["send-keys", "-t", "gwe", "C-c"])?;
    tmux.wait_for("gateway: withdrawn with Ctrl-C")?;
    let abandoned = wait_until(Duration::from_secs(10), || {
        approvals_for(&s, &withdrawn)
            .iter()
            .any(|a| a["status"] == "abandoned")
    });
    assert!(abandoned, "{:?}", approvals_for(&s, &withdrawn));
    tmux.cmd(&["send-keys", "-t", "gwe", "printf 'still-%d\\n' 8", "Enter"])?;
    tmux.wait_for("still-8")?;
    assert!(!Path::new(&marker).exists(), "the withdrawn line ran");
    tmux.cmd(&["send-keys", "-t", "gwe", "exit 7", "Enter"])?;
    ensure!(
        wait_until(Duration::from_secs(20), || fs::read_to_string(&rc_file)
            .is_ok_and(|r| r.contains("RC=7"))),
        "exit status not passed through: {:?}\n{}",
        fs::read_to_string(&rc_file),
        tmux.screen()
    );

    let session = s.last_session()?;
    let lines = events(&session, "ssh_shell_line");
    let find = |l: &str| lines.iter().find(|e| e["line"] == l).copied();
    assert_eq!(
        find("printf 'hello-%d\\n' 42").context("line recorded")?["decision"],
        "allow",
        "{session}"
    );
    assert_eq!(
        find(&format!("touch {marker}; echo shutdown-now")).context("blocked line recorded")?["decision"],
        "deny"
    );
    assert_eq!(
        find(&held).context("held line recorded")?["decision"],
        "require_approval"
    );
    let approvals = events(&session, "ssh_approval");
    assert_eq!(approvals[0]["outcome"]["outcome"], "approved", "{session}");
    assert_eq!(approvals[1]["outcome"]["outcome"], "withdrawn", "{session}");
    let end = events(&session, "ssh_channel_end");
    assert_eq!(end[0]["exit_status"], 7);

    // Replay with its timing (sped up), and asciicast v2 that asciinema accepts.
    let id = session["id"].as_i64().unwrap().to_string();
    let out = s.daemon.cli(&[
        "sessions",
        "replay",
        &id,
        "--speed",
        "50",
        "--max-idle",
        "0.2",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let replayed = text(&out.stdout);
    assert!(
        replayed.contains("hello-42") && replayed.contains("40 132"),
        "{replayed}"
    );
    let cast = s.dir.path().join("session.cast");
    let out = s.daemon.cli(&[
        "sessions",
        "export",
        &id,
        "--format",
        "asciicast",
        "-o",
        cast.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let cast_text = fs::read_to_string(&cast)?;
    let header: Value = serde_json::from_str(cast_text.lines().next().unwrap_or(""))?;
    assert_eq!(header["version"], 2);
    assert_eq!(header["width"], 100);
    assert!(
        cast_text
            .lines()
            .any(|l| l.contains("\"r\"") && l.contains("132x40"))
    );
    if which("asciinema") {
        // asciinema wants a terminal: `script` gives it one.
        let out = Command::new("script")
            .args([
                "-qec",
                &format!("asciinema play -s 20 -i 0.2 {}", cast.display()),
                "/dev/null",
            ])
            .stdin(Stdio::null())
            .output()?;
        assert!(
            out.status.success(),
            "asciinema play: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        assert!(
            text(&out.stdout).contains("hello-42"),
            "{}",
            text(&out.stdout)
        );
    }
    let out = s
        .daemon
        .cli(&["sessions", "export", &id, "--format", "jsonl"]);
    let first: Value = serde_json::from_str(text(&out.stdout).lines().next().unwrap_or(""))?;
    assert_eq!(first["session"]["id"].to_string(), id);
    Ok(())
}

fn which(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn forwarding_is_refused_unless_a_rule_names_the_destination() -> Result<()> {
    let s = Setup::new("", "")?;
    // Not named by a rule: refused.
    let out = s.ssh(&["-W", "10.0.0.1:5432"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "{err}");
    assert!(err.contains("administratively prohibited"), "{err}");
    // ssh -R: refused.
    let out = s.job(
        "ssh",
        &[
            "-o",
            "ExitOnForwardFailure=yes",
            "-R",
            "127.0.0.1:15556:127.0.0.1:22",
            &s.host(),
            "true",
        ],
    );
    assert_eq!(out.status.code(), Some(255));
    assert!(
        text(&out.stderr).contains("remote port forwarding failed"),
        "{}",
        text(&out.stderr)
    );
    // Named by a rule: the host's own sshd answers through the forwarded channel.
    let out = s.job("ssh", &["-W", &format!("{}:22", s.sshd.addr), &s.host()]);
    assert!(
        text(&out.stdout).starts_with("SSH-2.0-"),
        "{}",
        text(&out.stderr)
    );
    let session = s.last_session()?;
    let fwd = events(&session, "ssh_forward");
    assert_eq!(fwd[0]["decision"], "allow");
    assert_eq!(fwd[0]["rule"], "forward-to-the-host-itself");

    // Agent forwarding: the host sees no agent.
    let agent = Command::new("ssh-agent").arg("-s").output()?;
    let env = text(&agent.stdout);
    let sock = env
        .split(';')
        .find_map(|p| p.trim().strip_prefix("SSH_AUTH_SOCK="))
        .context("agent socket")?
        .to_string();
    let pid = env
        .split(';')
        .find_map(|p| p.trim().strip_prefix("SSH_AGENT_PID="))
        .context("agent pid")?
        .to_string();
    let mut opts = client_options(&s.known_hosts);
    opts.extend([
        "-A".into(),
        s.host(),
        "printenv SSH_AUTH_SOCK || echo none".into(),
    ]);
    let out = Command::new(gateway_bin())
        .arg("--control-socket")
        .arg(&s.daemon.control_socket)
        .args(["run", "--", "ssh"])
        .args(&opts)
        .env("SSH_AUTH_SOCK", &sock)
        .output()?;
    let _ = Command::new("kill").arg(&pid).output();
    assert_eq!(text(&out.stdout), "none\n", "{}", text(&out.stderr));
    let session = s.last_session()?;
    assert!(!events(&session, "ssh_agent_forwarding").is_empty());
    Ok(())
}

#[test]
fn an_upstream_with_another_host_key_is_refused() -> Result<()> {
    let id = unique_id();
    let dir = TempDir::new(&format!("sshk{id}"));
    let ns = Netns::new(&id)?;
    let sshd = Sshd::start(&ns, dir.path())?;
    let impostor = dir.path().join("impostor");
    keygen(&impostor)?;
    let wrong = fs::read_to_string(impostor.with_extension("pub"))?;
    let wrong: String = wrong
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    let target = sshd.target("web", "").replace(&sshd.host_key, &wrong);
    let daemon = Daemon::start(DaemonConfig {
        server: String::new(),
        body: format!(
            "{target}\n[[rules]]\nname = \"jobs-may-ssh\"\naction = \"allow\"\ntargets = [\"web\"]\nunauthenticated = true\n"
        ),
    })?;
    let known_hosts = dir.path().join("known_hosts");
    fs::write(&known_hosts, known_hosts_lines(&daemon)?)?;
    let marker = format!("/tmp/gwe-mitm-{id}");
    let mut args = client_options(&known_hosts);
    args.extend([format!("root@{}", sshd.addr), format!("touch {marker}")]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = daemon.run_job(&[], "ssh", &args);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "{err}");
    assert!(err.contains("not the key pinned"), "{err}");
    assert!(!Path::new(&marker).exists());
    let sessions = daemon.sessions()?;
    let sid = sessions.last().context("session")?["id"].to_string();
    let shown = daemon.show_session(&sid)?;
    assert!(shown.to_string().contains("upstream_error"), "{shown}");
    Ok(())
}

#[test]
fn bad_ssh_input_gets_clean_errors_and_the_gateway_keeps_serving() -> Result<()> {
    let s = Setup::new("", "handshake_timeout = \"2s\"")?;
    let dst = format!("/dev/tcp/{}/22", s.sshd.addr);
    // A job writes raw bytes to the SSH target and reads until the gateway closes. `timeout`
    // bounds the test; a gateway that closes cleanly makes it end long before.
    let raw = |payload: &str| -> Output {
        // SIGPIPE ignored: the gateway may reset the connection while the payload is written.
        let script = format!(
            "trap '' PIPE; exec 3<>{dst}; printf '{payload}' >&3 2>/dev/null; cat <&3 >/dev/null 2>&1; echo closed"
        );
        s.daemon
            .run_job(&[], "timeout", &["20", "bash", "-c", &script])
    };
    // Not SSH at all.
    let out = raw("GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n");
    assert_eq!(
        text(&out.stdout),
        "closed\n",
        "{} {:?}",
        text(&out.stderr),
        out.status
    );
    // A banner, then garbage where the key exchange should be.
    let out = raw(
        "SSH-2.0-bad\\r\\n\\x00\\x00\\x00\\x10\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff",
    );
    assert_eq!(text(&out.stdout), "closed\n");
    // A banner and then silence: cut off after the handshake timeout.
    let out = raw("SSH-2.0-silent\\r\\n");
    assert_eq!(text(&out.stdout), "closed\n");
    // A length field of 4 GiB.
    let out = raw("SSH-2.0-big\\r\\n\\xff\\xff\\xff\\xff\\x00");
    assert_eq!(text(&out.stdout), "closed\n");
    // Algorithms the gateway does not offer: the client is told.
    let out = s.ssh(&["-o", "KexAlgorithms=diffie-hellman-group1-sha1", "true"]);
    assert_eq!(out.status.code(), Some(255));
    assert!(
        text(&out.stderr).contains("no matching key exchange"),
        "{}",
        text(&out.stderr)
    );
    let out = s.ssh(&["-o", "Ciphers=3des-cbc", "true"]);
    assert_eq!(out.status.code(), Some(255));

    // A flood of stdin into a command that does not read it for a while: memory stays bounded.
    let pid = s.daemon.pid();
    let mut opts = client_options(&s.known_hosts);
    opts.extend([s.host(), "sleep 2; cat > /dev/null; echo done".into()]);
    let flood = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "head -c 400000000 /dev/zero | {} --control-socket {} run -- ssh {}",
            gateway_bin().display(),
            s.daemon.control_socket.display(),
            opts.iter()
                .map(|o| format!("'{o}'"))
                .collect::<Vec<_>>()
                .join(" ")
        ))
        .stdout(Stdio::piped())
        .spawn()?;
    let mut max_rss = 0u64;
    let mut child = flood;
    let finished = wait_until(Duration::from_secs(120), || {
        max_rss = max_rss.max(rss_kib(pid));
        matches!(child.try_wait(), Ok(Some(_)))
    });
    ensure!(finished, "the flood did not finish");
    let out = child.wait_with_output()?;
    assert_eq!(text(&out.stdout), "done\n");
    assert!(max_rss < 300 * 1024, "gateway RSS reached {max_rss} KiB");

    // Still serving.
    let out = s.ssh(&["echo still-here"]);
    assert_eq!(text(&out.stdout), "still-here\n", "{}", text(&out.stderr));
    Ok(())
}

fn rss_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

#[test]
fn one_cert_authority_line_trusts_the_gateway_for_every_ssh_target() -> Result<()> {
    let s = Setup::new("", "")?;
    let out = Command::new(gateway_bin())
        .arg("--config")
        .arg(&s.daemon.config_path)
        .args(["targets", "known-hosts", "--ca"])
        .output()?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let line = text(&out.stdout);
    assert!(
        line.starts_with(&format!("@cert-authority {} ssh-ed25519 ", s.sshd.addr)),
        "{line}"
    );
    let ca_only = s.dir.path().join("known_hosts.ca");
    fs::write(&ca_only, &line)?;
    let mut opts = client_options(&ca_only);
    opts.extend([s.host(), "echo certified".into()]);
    let opts: Vec<&str> = opts.iter().map(String::as_str).collect();
    let out = s.daemon.run_job(&[], "ssh", &opts);
    assert_eq!(text(&out.stdout), "certified\n", "{}", text(&out.stderr));
    // The plain key lines keep working next to the CA.
    let out = s.ssh(&["echo plain"]);
    assert_eq!(text(&out.stdout), "plain\n", "{}", text(&out.stderr));
    // A CA line for another host pattern does not vouch for this one.
    let elsewhere = s.dir.path().join("known_hosts.elsewhere");
    fs::write(
        &elsewhere,
        line.replacen(&s.sshd.addr.to_string(), "10.255.255.254", 1),
    )?;
    let mut opts = client_options(&elsewhere);
    opts.extend([s.host(), "true".into()]);
    let opts: Vec<&str> = opts.iter().map(String::as_str).collect();
    let out = s.daemon.run_job(&[], "ssh", &opts);
    assert_eq!(out.status.code(), Some(255), "{}", text(&out.stderr));
    Ok(())
}

/// Accepts one connection within `timeout`, reads a line, answers `reply`; returns the line read.
fn serve_one(listener: TcpListener, reply: &'static str, timeout: Duration) -> Result<String> {
    listener.set_nonblocking(true)?;
    let deadline = std::time::Instant::now() + timeout;
    let mut conn = loop {
        match listener.accept() {
            Ok((c, _)) => break c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                ensure!(
                    std::time::Instant::now() < deadline,
                    "no connection reached the job's listener"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e.into()),
        }
    };
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(timeout))?;
    let mut line = String::new();
    BufReader::new(conn.try_clone()?).read_line(&mut line)?;
    conn.write_all(reply.as_bytes())?;
    Ok(line)
}

#[test]
fn remote_forwarding_is_relayed_only_where_a_rule_lets_the_host_listen() -> Result<()> {
    // The job's side of `ssh -R`: a listener next to the job, which the job's ssh reaches for each
    // forwarded connection (an ordinary connect() of the job: allowed directly here).
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let local = listener.local_addr()?.port();
    let s = Setup::new(&format!("allow_direct = [\"127.0.0.1:{local}\"]"), "")?;
    let served = std::thread::spawn(move || {
        serve_one(listener, "pong-from-the-job\n", Duration::from_secs(60))
    });
    // On the host, a connection to the forwarded port talks to the job's listener.
    let on_host = "exec 3<>/dev/tcp/127.0.0.1/17001; echo ping-from-the-host >&3; head -n1 <&3";
    let out = s.job(
        "ssh",
        &[
            "-o",
            "ExitOnForwardFailure=yes",
            // No bind address: OpenSSH asks for `localhost`, decided as 127.0.0.1.
            "-R",
            &format!("17001:127.0.0.1:{local}"),
            &s.host(),
            &format!("bash -c '{on_host}'"),
        ],
    );
    assert_eq!(
        text(&out.stdout),
        "pong-from-the-job\n",
        "{}",
        text(&out.stderr)
    );
    let heard = served.join().expect("listener thread")?;
    assert_eq!(heard, "ping-from-the-host\n");
    let session = s.last_session()?;
    let asked = events(&session, "ssh_forward");
    assert_eq!(asked.len(), 1, "{session}");
    assert_eq!(asked[0]["direction"], "remote");
    assert_eq!(asked[0]["listen"], "localhost:17001");
    assert_eq!(asked[0]["asked_as"], "127.0.0.1:17001");
    assert_eq!(asked[0]["decision"], "allow");
    assert_eq!(asked[0]["rule"], "reverse-tunnel-on-the-host-loopback");
    assert_eq!(
        events(&session, "ssh_forward_listening")[0]["listen"],
        "localhost:17001"
    );
    let conns = events(&session, "ssh_forward_connection");
    assert_eq!(conns.len(), 1, "{session}");
    assert_eq!(conns[0]["decision"], "allow");
    assert_eq!(conns[0]["listen"], "localhost:17001");
    assert!(
        conns[0]["originator"]
            .as_str()
            .is_some_and(|o| o.starts_with("127.0.0.1:")),
        "{session}"
    );
    // The relayed channel is recorded like any other channel.
    assert!(
        events(&session, "ssh_channel_end")
            .iter()
            .any(|e| e["kind"] == "remote_forward"),
        "{session}"
    );

    // Refused: another port, every interface, a port the host would pick. The host never listens.
    for spec in [
        format!("127.0.0.1:17002:127.0.0.1:{local}"),
        format!("*:17001:127.0.0.1:{local}"),
        format!("0:127.0.0.1:{local}"),
    ] {
        let out = s.job(
            "ssh",
            &[
                "-o",
                "ExitOnForwardFailure=yes",
                "-R",
                &spec,
                &s.host(),
                "echo should-not-run",
            ],
        );
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(255), "{spec}: {err}");
        assert!(
            err.contains("remote port forwarding failed"),
            "{spec}: {err}"
        );
        assert_eq!(text(&out.stdout), "", "{spec}");
        let session = s.last_session()?;
        let asked = events(&session, "ssh_forward");
        assert_eq!(asked[0]["decision"], "deny", "{spec}: {session}");
        assert!(events(&session, "ssh_forward_listening").is_empty());
    }
    // Nothing was left listening on the host (the allowed forward ended with its session).
    let out = s.ssh(&["bash -c 'exec 3<>/dev/tcp/127.0.0.1/17001' && echo open || echo closed"]);
    assert_eq!(text(&out.stdout), "closed\n", "{}", text(&out.stderr));
    Ok(())
}

#[test]
fn a_cancelled_remote_forward_stops_listening_on_the_host() -> Result<()> {
    // Held open and never accepted: the host's connections land in its backlog.
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let local = listener.local_addr()?.port();
    let s = Setup::new(&format!("allow_direct = [\"127.0.0.1:{local}\"]"), "")?;
    let control = s.dir.path().join("ctl");
    let control = control.to_str().unwrap();
    let spec = format!("17001:127.0.0.1:{local}");
    // A master connection holding the forward (bounded by `timeout` in the job).
    let master = spawn_job(
        &s,
        60,
        "ssh",
        &[
            "-M",
            "-S",
            control,
            "-N",
            "-o",
            "ExitOnForwardFailure=yes",
            "-R",
            &spec,
            &s.host(),
        ],
        Stdio::null(),
    )?;
    let probe = "bash -c 'exec 3<>/dev/tcp/127.0.0.1/17001' && echo open || echo closed";
    let listening = wait_until(Duration::from_secs(20), || {
        text(&s.ssh(&[probe]).stdout) == "open\n"
    });
    ensure!(listening, "the remote forward never listened");
    // `ssh -O cancel` asks the master to send cancel-tcpip-forward (the control client talks to
    // the master over its socket, not to the network).
    let out = Command::new("timeout")
        .args([
            "20",
            "ssh",
            "-F",
            "/dev/null",
            "-S",
            control,
            "-O",
            "cancel",
            "-R",
            &spec,
        ])
        .arg(s.host())
        .output()?;
    assert!(out.status.success(), "cancel: {}", text(&out.stderr));
    let closed = wait_until(Duration::from_secs(10), || {
        text(&s.ssh(&[probe]).stdout) == "closed\n"
    });
    let _ = Command::new("timeout")
        .args(["20", "ssh", "-F", "/dev/null", "-S", control, "-O", "exit"])
        .arg(s.host())
        .output();
    let out = master.wait_with_output()?;
    assert!(closed, "the host still listens after the cancel");
    drop(listener);
    // The master's session: the one that asked for the forward.
    let shown = s
        .ssh_sessions()?
        .into_iter()
        .filter_map(|sess| s.daemon.show_session(&sess["id"]).ok())
        .find(|shown| !events(shown, "ssh_forward").is_empty())
        .context("the master's session")?;
    let cancels = events(&shown, "ssh_forward_cancel");
    assert_eq!(cancels.len(), 1, "{shown}\n{}", text(&out.stderr));
    assert_eq!(cancels[0]["listen"], "localhost:17001");
    Ok(())
}

#[test]
fn upstream_password_and_rsa_key_logins() -> Result<()> {
    let id = unique_id();
    let dir = TempDir::new(&format!("sshp{id}"));
    let ns = Netns::new(&id)?;
    // A host that takes a password (for a user the test creates) and nothing else ...
    let user = TestUser::create()?;
    let by_password = Sshd::start_with(
        &ns,
        dir.path(),
        SshdOptions {
            config: "PasswordAuthentication yes\nPubkeyAuthentication no\nAuthenticationMethods password",
            ..Default::default()
        },
    )?;
    // ... and one whose host key and accepted client key are RSA.
    let by_rsa = Sshd::start_with(
        &ns,
        dir.path(),
        SshdOptions {
            port: 2222,
            key_type: "rsa",
            config: "",
        },
    )?;
    let secret = dir.path().join("password");
    fs::write(&secret, format!("{}\n", user.password))?;
    let body = format!(
        "[[targets]]\nname = \"pw\"\nprotocol = \"ssh\"\naddress = \"{addr}:22\"\n[targets.credentials]\nuser = \"{name}\"\npassword_file = \"{secret}\"\n[targets.ssh]\nhost_key = \"{pw_key}\"\n\n{rsa}\n\
         [[rules]]\nname = \"jobs-may-ssh\"\naction = \"allow\"\nunauthenticated = true\n",
        addr = by_password.addr,
        name = user.name,
        secret = secret.display(),
        pw_key = by_password.host_key,
        rsa = by_rsa.target("rsa", ""),
    );
    assert!(
        by_rsa.host_key.starts_with("ssh-rsa "),
        "{}",
        by_rsa.host_key
    );
    let daemon = Daemon::start(DaemonConfig {
        server: String::new(),
        body,
    })?;
    let known_hosts = dir.path().join("known_hosts");
    fs::write(&known_hosts, known_hosts_lines(&daemon)?)?;
    let ssh = |port: &str, login: &str, command: &str| {
        let mut args = client_options(&known_hosts);
        args.extend([
            "-p".into(),
            port.into(),
            format!("{login}@{}", by_password.addr),
            command.into(),
        ]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        daemon.run_job(&[], "ssh", &args)
    };

    // The job holds no secret (BatchMode, no keys); the gateway logs in with the password.
    let out = ssh("22", "anyone", "id -un");
    assert_eq!(
        text(&out.stdout),
        format!("{}\n", user.name),
        "{}",
        text(&out.stderr)
    );
    let sessions = daemon.sessions()?;
    let sid = sessions.last().context("session")?["id"].to_string();
    let shown = daemon.show_session(&sid)?;
    assert!(
        shown.to_string().contains("upstream_authenticated"),
        "{shown}"
    );
    assert!(!shown.to_string().contains(&user.password), "{shown}");
    // The password is what lets it in: with another one in the file, the host refuses.
    fs::write(&secret, "not-the-password\n")?;
    let out = ssh("22", "anyone", "id -un");
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "{err}");
    assert_eq!(text(&out.stdout), "");
    assert!(err.contains("refused the gateway's credentials"), "{err}");

    // RSA: the host's RSA key is pinned, the gateway signs with rsa-sha2-*.
    let out = ssh("2222", "root", "echo rsa-ok");
    assert_eq!(text(&out.stdout), "rsa-ok\n", "{}", text(&out.stderr));
    let log = fs::read_to_string(&by_rsa.log)?;
    assert!(
        log.contains("Accepted publickey for root") && log.contains("RSA"),
        "{log}"
    );
    Ok(())
}

#[test]
fn a_malformed_sftp_request_is_answered_and_recorded() -> Result<()> {
    let s = Setup::new("", "")?;
    let out = Command::new(gateway_bin())
        .arg("--control-socket")
        .arg(&s.daemon.control_socket)
        .args(["run", "--", "timeout", "60"])
        .arg(sshraw_bin())
        .args([
            &format!("{}:22", s.sshd.addr),
            "root",
            "0",
            "0",
            "sftp-malformed",
        ])
        .output()?;
    // SSH_FX_BAD_MESSAGE for the request's own id, instead of a client left waiting.
    assert_eq!(
        text(&out.stdout),
        "status id=77 code=5\n",
        "{}",
        text(&out.stderr)
    );
    let session = s
        .ssh_sessions()?
        .into_iter()
        .find(|x| x["comm"] == "e2e-sshraw")
        .context("the raw client's session")?;
    let shown = s.daemon.show_session(&session["id"])?;
    assert!(
        shown["events"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["kind"] == "ssh_sftp"
                && e["detail"]["reason"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("malformed sftp request")))),
        "{shown}"
    );
    // The gateway goes on serving.
    let out = s.ssh(&["echo still-here"]);
    assert_eq!(text(&out.stdout), "still-here\n", "{}", text(&out.stderr));
    // An exec command with a NUL byte: refused with the reason, nothing runs.
    let out = Command::new(gateway_bin())
        .arg("--control-socket")
        .arg(&s.daemon.control_socket)
        .args(["run", "--", "timeout", "60"])
        .arg(sshraw_bin())
        .args([&format!("{}:22", s.sshd.addr), "root", "0", "0", "exec-nul"])
        .output()?;
    assert_eq!(
        text(&out.stdout),
        "bytes=0 exit=1\n",
        "{}",
        text(&out.stderr)
    );
    assert!(
        text(&out.stderr).contains("not UTF-8 text without NUL bytes"),
        "{}",
        text(&out.stderr)
    );
    Ok(())
}

#[test]
fn huge_window_adjusts_keep_the_gateway_bounded_and_serving() -> Result<()> {
    let s = Setup::new("", "")?;
    let pid = s.daemon.pid();
    let before = rss_kib(pid);
    // 100000 adjusts of 0xFFFFFFFF: the job's window overflows 32 bits at the second one, if a
    // gateway adds without care. Then 512 MiB of output while the client reads nothing at first:
    // the gateway may believe the window is open, the socket still holds it back.
    const FLOOD: u64 = 512 << 20;
    let stderr = s.dir.path().join("sshraw.err");
    let mut raw = Command::new(gateway_bin())
        .arg("--control-socket")
        .arg(&s.daemon.control_socket)
        .args(["run", "--"])
        .arg(sshraw_bin())
        .args([
            &format!("{}:22", s.sshd.addr),
            "root",
            "100000",
            "5",
            &format!("head -c {FLOOD} /dev/zero"),
        ])
        .stdout(Stdio::piped())
        .stderr(fs::File::create(&stderr)?)
        .spawn()?;
    let mut max_rss = 0u64;
    let paused = wait_until(Duration::from_secs(60), || {
        max_rss = max_rss.max(rss_kib(pid));
        fs::read_to_string(&stderr).is_ok_and(|e| e.contains("paused"))
            || matches!(raw.try_wait(), Ok(Some(_)))
    });
    // While the raw client reads nothing, another job is served.
    let out = s.ssh(&["echo still-here"]);
    let finished = wait_until(Duration::from_secs(180), || {
        max_rss = max_rss.max(rss_kib(pid));
        matches!(raw.try_wait(), Ok(Some(_)))
    });
    if !finished {
        let _ = raw.kill();
    }
    let raw_out = raw.wait_with_output()?;
    let raw_err = fs::read_to_string(&stderr).unwrap_or_default();
    ensure!(
        paused && finished,
        "the raw client did not finish: {raw_err}"
    );
    assert_eq!(text(&out.stdout), "still-here\n", "{}", text(&out.stderr));
    let out = raw_out;
    // Every byte arrived: the window neither wrapped to something small nor stalled.
    assert_eq!(
        text(&out.stdout),
        format!("bytes={FLOOD} exit=0\n"),
        "{raw_err}"
    );
    eprintln!(
        "gateway RSS: {before} KiB before, at most {max_rss} KiB during; raw client: {raw_err}"
    );
    assert!(
        max_rss < before + 128 * 1024,
        "gateway RSS grew from {before} to {max_rss} KiB"
    );
    // The gateway is still up and serves.
    let out = s.ssh(&["echo after"]);
    assert_eq!(text(&out.stdout), "after\n", "{}", text(&out.stderr));
    let session = s
        .ssh_sessions()?
        .into_iter()
        .find(|x| x["comm"] == "e2e-sshraw")
        .context("the raw client's session")?;
    assert!(
        session["bytes_down"].as_u64().unwrap_or(0) >= FLOOD,
        "{session}"
    );
    Ok(())
}

/// Runs `line` as `ssh host LINE` and expects the gateway to refuse it: exit status 1, nothing on
/// stdout (it never ran), and `reason` in what the job reads on stderr.
fn assert_refused(s: &Setup, line: &str, reason: &str) {
    let out = s.ssh(&[line]);
    let err = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{line}: {err}{}",
        text(&out.stdout)
    );
    assert_eq!(text(&out.stdout), "", "{line} ran: {err}");
    assert!(err.contains(reason), "{line}: {err}");
}

#[test]
fn command_rules_see_argv_not_shell_source() -> Result<()> {
    let s = Setup::new("", "")?;
    // Quotes and escapes are removed, lists split, `sh -c`, `eval` and `env` unwrapped before the
    // rules look: each of these runs `echo shutdown` on the host and is denied as `*shutdown*`.
    for line in [
        "echo shut''down",
        "echo shut\\down",
        "echo \"shut\"down",
        "true && echo shut''down",
        "true; echo shut''down | cat",
        "bash -c 'echo shut\"\"down'",
        "env X=1 sh -lc \"echo shut''down\"",
        "exec eval echo shut''down",
        "sudo -u root nohup echo shut''down",
    ] {
        assert_refused(&s, line, "shutting hosts down is not for CI jobs");
    }
    // What the gateway cannot see through is refused where a deny or approval rule about commands
    // applies, with the reason; nothing runs.
    let marker = format!("/tmp/gwe-opaque-{}", unique_id());
    for (line, why) in [
        (
            format!("s=shut; touch {marker}; echo ${{s}}down"),
            "expansion",
        ),
        (format!("touch {marker} `echo x`"), "command substitution"),
        (format!("touch {marker} $(echo x)"), "expansion"),
        (
            format!("e''cho hi; touch {marker}"),
            "quoting in the command word",
        ),
        (
            format!("touch {marker}; echo shutdow?"),
            "pathname expansion",
        ),
        (format!("touch {marker}; ech{{o,}} hi"), "brace expansion"),
        (
            format!("if true; then touch {marker}; fi"),
            "compound command",
        ),
        (format!("(touch {marker})"), "subshell"),
        (format!("touch {marker} ~"), "tilde expansion"),
        (format!("cat <<EOF\ntouch {marker}\nEOF"), "here-document"),
    ] {
        assert_refused(&s, &line, "cannot be checked against command rules");
        assert_refused(&s, &line, why);
        assert!(!Path::new(&marker).exists(), "{line} ran");
    }
    let session = s.last_session()?;
    let exec = &events(&session, "ssh_exec")[0];
    assert_eq!(exec["decision"], "deny", "{session}");
    assert_eq!(exec["rule"], "no-shutdown", "{session}");
    // The approval rule sees `systemctl 're'start`: the exec is held (and denied here).
    let line = "echo systemctl 're'start app";
    let job = spawn_job(&s, 60, "ssh", &[&s.host(), line], Stdio::null())?;
    let id = pending_approval(&s, line)?;
    let decided = s.daemon.cli(&["approvals", "deny", &id]);
    assert!(decided.status.success(), "{}", text(&decided.stderr));
    let out = job.wait_with_output()?;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "");
    // A list of plain commands is checked command by command and runs.
    let out = s.ssh(&["echo one && echo 'two; three' | cat >&2; exit 4"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "one\n");
    assert_eq!(text(&out.stderr), "two; three\n");
    // Lines of a shell without a terminal are held to the same rules.
    let script = s.dir.path().join("script.sh");
    fs::write(
        &script,
        format!("echo one\necho shut''down\ntouch {marker} $HOME\necho two\n"),
    )?;
    // Also when the job asks for a shell as a command (`ssh host sh < script`).
    let host = s.host();
    for args in [["-T", &host], [&host, "sh"], [&host, "bash -s"]] {
        let job = spawn_job(&s, 60, "ssh", &args, fs::File::open(&script)?.into())?;
        let out = job.wait_with_output()?;
        let err = text(&out.stderr);
        assert_eq!(text(&out.stdout), "one\ntwo\n", "{args:?}: {err}");
        assert!(!Path::new(&marker).exists(), "a refused script line ran");
    }
    Ok(())
}

#[test]
fn allow_rules_admit_only_the_command_they_name() -> Result<()> {
    let rules = r#"
[[rules]]
name = "status-only"
action = "allow"
unauthenticated = true
[rules.ssh]
operations = ["exec", "shell"]
commands = ["echo status *"]

[[rules]]
name = "nothing-else"
action = "deny"
unauthenticated = true
reason = "only named commands"
[rules.ssh]
operations = ["exec", "shell"]

[[rules]]
name = "jobs-may-ssh"
action = "allow"
unauthenticated = true
"#;
    let s = Setup::with_rules("", "", rules)?;
    let out = s.ssh(&["echo status 'a b'"]);
    assert_eq!(text(&out.stdout), "status a b\n", "{}", text(&out.stderr));
    let marker = format!("/tmp/gwe-allow-{}", unique_id());
    for line in [
        format!("echo status x; touch {marker}"),
        format!("echo status x && touch {marker}"),
        format!("echo status x | tee {marker}"),
        format!("echo status x > {marker}"),
        format!("echo status x\ntouch {marker}"),
        format!("echo status $(touch {marker})"),
        format!("echo status `touch {marker}`"),
        format!("X=1 echo status x; touch {marker}"),
    ] {
        assert_refused(&s, &line, "only named commands");
        assert!(!Path::new(&marker).exists(), "{line:?} ran");
    }
    Ok(())
}

#[test]
fn a_raw_command_rule_matches_shell_source_as_typed() -> Result<()> {
    let rules = r#"
[[rules]]
name = "this-exact-pipeline"
action = "allow"
unauthenticated = true
[rules.ssh]
operations = ["exec"]
commands = ["echo raw | tr a-z A-Z"]
raw = true

[[rules]]
name = "nothing-else"
action = "deny"
unauthenticated = true
reason = "only named commands"
[rules.ssh]
operations = ["exec", "shell"]

[[rules]]
name = "jobs-may-ssh"
action = "allow"
unauthenticated = true
"#;
    let s = Setup::with_rules("", "", rules)?;
    let out = s.ssh(&["echo raw | tr a-z A-Z"]);
    assert_eq!(text(&out.stdout), "RAW\n", "{}", text(&out.stderr));
    assert_refused(&s, "echo raw | tr a-z A-Z; id", "only named commands");
    Ok(())
}

#[test]
fn sftp_path_rules_see_the_path_the_host_uses() -> Result<()> {
    // The protected directories live in the test's directory (the host shares the file system).
    let rules = r#"
[[rules]]
name = "etc-is-read-only"
action = "deny"
unauthenticated = true
[rules.ssh]
operations = ["sftp_write", "sftp_delete"]
paths = ["{DIR}/etc/*"]

[[rules]]
name = "secrets-are-not-read"
action = "deny"
unauthenticated = true
[rules.ssh]
operations = ["sftp_read"]
paths = ["{DIR}/secret/*"]

[[rules]]
name = "jobs-may-ssh"
action = "allow"
unauthenticated = true
"#;
    let s = Setup::with_rules("", "", rules)?;
    let dir = s.dir.path().display().to_string();
    for d in ["etc", "secret", "tmp", "local"] {
        fs::create_dir_all(format!("{dir}/{d}"))?;
    }
    fs::write(format!("{dir}/etc/existing"), "x")?;
    fs::write(format!("{dir}/tmp/movable"), "x")?;
    fs::write(format!("{dir}/secret/key"), "top secret")?;
    std::os::unix::fs::symlink(format!("{dir}/etc"), format!("{dir}/l"))?;
    std::os::unix::fs::symlink(format!("{dir}/secret"), format!("{dir}/s"))?;
    std::os::unix::fs::symlink(format!("{dir}/secret/key"), format!("{dir}/keylink"))?;
    let local = format!("{dir}/local/f");
    fs::write(&local, "payload")?;
    let etc_mode = fs::metadata(format!("{dir}/etc"))?.permissions();
    // From root's home (/root) on the host.
    let relative = format!("../{}/etc/relative", dir.trim_start_matches('/'));
    // `-`: the batch goes on after a refusal.
    let batch = format!(
        "-put {local} /{dir}/etc/double-slash\n\
         -put {local} {dir}/tmp/../etc/dot-dot\n\
         -put {local} {relative}\n\
         -put {local} {dir}/l/via-link\n\
         -put {local} {dir}/etc/./dot\n\
         -rename {dir}/tmp/movable {dir}/l/renamed\n\
         -rm {dir}/l/existing\n\
         -chmod 777 {dir}/etc\n\
         -ln -s {dir}/etc {dir}/tmp/new-link\n\
         -ln {dir}/etc/existing {dir}/tmp/hard-link\n\
         -get {dir}/s/key {dir}/local/k1\n\
         -get {dir}/keylink {dir}/local/k2\n\
         -put {local} {dir}/nowhere/x\n\
         put {local} {dir}/tmp/allowed\n"
    );
    let batch_file = format!("{dir}/local/batch");
    fs::write(&batch_file, batch)?;
    let out = s.job("sftp", &["-b", &batch_file, &s.host()]);
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{all}");
    for name in [
        "double-slash",
        "dot-dot",
        "relative",
        "via-link",
        "dot",
        "renamed",
    ] {
        assert!(
            !Path::new(&format!("{dir}/etc/{name}")).exists(),
            "{name} was written: {all}"
        );
    }
    assert!(Path::new(&format!("{dir}/etc/existing")).exists(), "{all}");
    assert!(Path::new(&format!("{dir}/tmp/movable")).exists(), "{all}");
    assert_eq!(fs::metadata(format!("{dir}/etc"))?.permissions(), etc_mode);
    for made in ["tmp/new-link", "tmp/hard-link", "local/k1", "local/k2"] {
        assert!(
            fs::symlink_metadata(format!("{dir}/{made}")).is_err(),
            "{made} exists: {all}"
        );
    }
    assert_eq!(fs::read_to_string(format!("{dir}/tmp/allowed"))?, "payload");
    let session = s.last_session()?;
    let refused: Vec<_> = events(&session, "ssh_sftp")
        .into_iter()
        .filter(|e| e["decision"] == "deny")
        .collect();
    assert!(
        refused
            .iter()
            .any(|e| e["resolved"] == format!("{dir}/etc/via-link").as_str()),
        "{session}"
    );
    assert!(
        refused.iter().any(|e| e["reason"]
            .as_str()
            .is_some_and(|r| r.contains("no such directory on the host"))),
        "{session}"
    );

    // Legacy scp into the protected directory itself (the path is the directory).
    let out = s.job("scp", &["-O", &local, &format!("{}:{dir}/etc", s.host())]);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(!Path::new(&format!("{dir}/etc/f")).exists());

    // sftp over an exec of the sftp server (`sftp -s PATH`) is gated and recorded like the
    // subsystem.
    let batch = format!("-put {local} {dir}/etc/via-exec\nput {local} {dir}/tmp/via-exec\n");
    fs::write(&batch_file, batch)?;
    let out = s.job(
        "sftp",
        &[
            "-s",
            "/usr/lib/openssh/sftp-server",
            "-b",
            &batch_file,
            &s.host(),
        ],
    );
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(!Path::new(&format!("{dir}/etc/via-exec")).exists(), "{all}");
    assert_eq!(
        fs::read_to_string(format!("{dir}/tmp/via-exec"))?,
        "payload"
    );
    let session = s.last_session()?;
    assert!(
        events(&session, "ssh_sftp_file")
            .iter()
            .any(|f| f["path"] == format!("{dir}/tmp/via-exec").as_str()),
        "{session}"
    );
    Ok(())
}

#[test]
fn a_secret_split_across_terminal_packets_is_masked_in_the_recording() -> Result<()> {
    let s = Setup::new("", "")?;
    // Two writes with a pause between them: two SSH data messages.
    let out = s.job(
        "ssh",
        &[
            "-tt",
            &s.host(),
            "printf 'key=AKIA%s' IOSF; sleep 1; printf '%sEXAMPLE done\\n' ODNN7",
        ],
    );
    assert!(
        text(&out.stdout).contains("key=AKIAIOSFODNN7EXAMPLE done"),
        "{}",
        text(&out.stderr)
    );
    let session = s.last_session()?;
    let file = events(&session, "ssh_recording")[0]["file"]
        .as_str()
        .context("a recording")?
        .to_string();
    let cast = fs::read_to_string(&file)?;
    // What a player shows: the output events one after the other.
    let played: String = cast
        .lines()
        .skip(1)
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e[1] == "o")
        .filter_map(|e| e[2].as_str().map(str::to_string))
        .collect();
    assert!(
        played.contains("key=[masked:aws_access_key] done"),
        "{cast}"
    );
    assert!(
        !cast.contains("AKIAIOSF") && !cast.contains("ODNN7EXAMPLE"),
        "{cast}"
    );
    // A key in the command is masked where the recording and the channel's end name it.
    let out = s.job("ssh", &["-tt", &s.host(), "echo AKIAIOSFODNN7EXAMPLE"]);
    assert!(text(&out.stdout).contains("AKIAIOSFODNN7EXAMPLE"));
    let session = s.last_session()?;
    let end = &events(&session, "ssh_channel_end")[0];
    assert_eq!(end["command"], "echo [masked:aws_access_key]", "{end}");
    let file = events(&session, "ssh_recording")[0]["file"]
        .as_str()
        .context("a recording")?
        .to_string();
    let cast = fs::read_to_string(&file)?;
    assert!(!cast.contains("AKIAIOSF"), "{cast}");
    Ok(())
}
