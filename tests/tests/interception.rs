//! The interception core end to end: real eBPF programs on the real kernel, a "remote" host in a
//! network namespace, a gateway daemon per test, and jobs started with `gateway run` or attached.

use std::{process::Command, time::Duration};

use anyhow::Result;
use gateway_e2e::{
    Daemon, DaemonConfig, EchoServer, Netns, Postgres, TempDir, TestCgroup, probe_bin, unique_id,
    wait_until,
};
use serde_json::Value;

/// A remote echo server (IPv4 and IPv6, ports 7000 and 7001) and a daemon whose targets are the
/// echo server's port 7000 and a closed port (plus what a test adds; `{v4}` in it is the echo
/// server's IPv4 address), open to unauthenticated jobs. They go through the gateway
/// (`path = "proxy"`): these tests are about interception; `kernel_path.rs` has the kernel path.
struct Setup {
    daemon: Daemon,
    echo: EchoServer,
    ns: Netns,
    _dir: TempDir,
}

impl Setup {
    fn new(server: &str) -> Result<Setup> {
        Self::with_body(server, "")
    }

    fn with_body(server: &str, extra_body: &str) -> Result<Setup> {
        let id = unique_id();
        let dir = TempDir::new(&format!("s{id}"));
        let ns = Netns::new(&id)?;
        let echo = EchoServer::start(
            &ns,
            dir.path(),
            &[
                format!("{}:7000", ns.remote_ip),
                format!("{}:7001", ns.remote_ip),
                format!("[{}]:7000", ns.remote_ip6),
            ],
        )?;
        let body = format!(
            r#"
[[targets]]
name = "echo"
protocol = "tcp"
path = "proxy"
address = "{v4}:7000"

[[targets]]
name = "echo6"
protocol = "tcp"
path = "proxy"
address = "[{v6}]:7000"

[[targets]]
name = "closed-port"
protocol = "tcp"
path = "proxy"
address = "{v4}:7009"

{extra}

[[rules]]
name = "jobs-may-echo"
action = "allow"
targets = ["echo", "echo6", "closed-port"]
unauthenticated = true
"#,
            v4 = ns.remote_ip,
            v6 = ns.remote_ip6,
            extra = extra_body.replace("{v4}", &ns.remote_ip.to_string()),
        );
        let daemon = Daemon::start(DaemonConfig {
            server: server.to_string(),
            body,
        })?;
        Ok(Setup {
            daemon,
            echo,
            ns,
            _dir: dir,
        })
    }

    fn v4(&self, port: u16) -> String {
        format!("{}:{port}", self.ns.remote_ip)
    }

    fn session_for(&self, destination: &str) -> Result<Vec<Value>> {
        Ok(self
            .daemon
            .sessions()?
            .into_iter()
            .filter(|s| s["destination"] == destination)
            .collect())
    }
}

fn errno(v: &Value) -> Option<i64> {
    v["errno"].as_i64()
}

#[test]
fn job_reaches_tcp_target_through_the_gateway_and_is_attributed() -> Result<()> {
    let s = Setup::new("")?;
    let dst = s.v4(7000);
    let v = s.daemon.probe_in_job(&["connect", &dst, "through"])?;
    assert_eq!(v["ok"], true, "{v}");
    // getpeername: the job sees the address it connected to, not the listener.
    assert_eq!(v["peer"], dst.as_str(), "{v}");
    // Its socket really is connected to the gateway's loopback listener…
    assert!(
        v["local"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{v}"
    );
    // …and the upstream connection was made by the gateway from the host side.
    assert!(
        v["greeting"]
            .as_str()
            .unwrap()
            .starts_with(&format!("hello {}:", s.ns.host_ip)),
        "{v}"
    );
    assert_eq!(v["echo"], "through");

    let sessions = s.session_for(&dst)?;
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    let session = &sessions[0];
    assert_eq!(session["target"], "echo");
    assert_eq!(session["decision"], "allow");
    assert_eq!(session["identity"], "unauthenticated");
    assert_eq!(session["comm"], "e2e-probe");
    assert_eq!(
        session["pid"], v["pid"],
        "session pid must be the probe's pid"
    );
    assert!(
        wait_until(Duration::from_secs(5), || {
            s.session_for(&dst)
                .is_ok_and(|l| l[0]["ended_at"].is_string() && l[0]["bytes_up"] == 7)
        }),
        "bytes_up/ended_at not recorded: {:?}",
        s.session_for(&dst)?
    );

    // The process details: exe and cmdline verified from /proc while it was alive.
    let shown = s.daemon.show_session(&session["id"])?;
    assert_eq!(shown["process"]["verified"], true, "{shown}");
    assert!(
        shown["process"]["exe"]
            .as_str()
            .unwrap()
            .ends_with("/e2e-probe"),
        "{shown}"
    );
    assert_eq!(shown["process"]["cmdline"][1], "connect");
    let kinds: Vec<&str> = shown["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert!(
        kinds.contains(&"upstream_connected") && kinds.contains(&"closed"),
        "{kinds:?}"
    );
    Ok(())
}

#[test]
fn a_process_that_execs_another_program_is_attributed_to_the_new_program() -> Result<()> {
    // The laundering an attacker would try: connect once as an innocuous program, then exec
    // (same pid, same start time) into another whose connections should pass as the first's.
    let s = Setup::new("")?;
    let dst = s.v4(7000);
    let script = format!(
        "exec 3<>/dev/tcp/{}/7000 && head -c 6 <&3 >/dev/null; exec 3>&-; exec \"$0\" connect {dst} after-exec",
        s.ns.remote_ip
    );
    let out = s.daemon.run_job(
        &[],
        "bash",
        &["-c", &script, &probe_bin().display().to_string()],
    );
    let v: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| anyhow::anyhow!("{e}: {}", String::from_utf8_lossy(&out.stderr)))?;
    assert_eq!(v["echo"], "after-exec", "{v}");

    let mut sessions = s.session_for(&dst)?;
    sessions.sort_by_key(|x| x["id"].as_i64());
    assert_eq!(sessions.len(), 2, "{sessions:?}");
    let shown: Vec<Value> = sessions
        .iter()
        .map(|x| s.daemon.show_session(&x["id"]))
        .collect::<Result<_>>()?;
    let (before, after) = (&shown[0]["process"], &shown[1]["process"]);
    assert_eq!(before["pid"], v["pid"], "{before}");
    assert_eq!(
        after["pid"], v["pid"],
        "one process, before and after its exec: {after}"
    );
    assert_eq!(before["comm"], "bash");
    assert!(
        before["exe"].as_str().unwrap().ends_with("/bash"),
        "{before}"
    );
    assert_eq!(after["comm"], "e2e-probe");
    assert_eq!(after["verified"], true, "{after}");
    assert!(
        after["exe"].as_str().unwrap().ends_with("/e2e-probe"),
        "attributed to the program before the exec: {after}"
    );
    assert_eq!(after["cmdline"][3], "after-exec", "{after}");
    Ok(())
}

#[test]
fn a_process_that_execs_itself_with_other_arguments_is_recorded_with_them() -> Result<()> {
    // Same pid, start time, exe and comm before and after the exec: only the arguments differ,
    // and the second connection must not be described by the first command line.
    let s = Setup::new("")?;
    let dst = s.v4(7000);
    let connect = format!(
        "exec 3<>/dev/tcp/{}/7000 && head -c 6 <&3 >/dev/null; exec 3>&-",
        s.ns.remote_ip
    );
    let script = format!("{connect}; exec bash -c '{connect}' second-image");
    let out = s
        .daemon
        .run_job(&[], "bash", &["-c", &script, "first-image"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut sessions = s.session_for(&dst)?;
    sessions.sort_by_key(|x| x["id"].as_i64());
    assert_eq!(sessions.len(), 2, "{sessions:?}");
    let args: Vec<Value> = sessions
        .iter()
        .map(|x| Ok(s.daemon.show_session(&x["id"])?["process"]["cmdline"][3].clone()))
        .collect::<Result<_>>()?;
    assert_eq!(args, ["first-image", "second-image"]);
    Ok(())
}

#[test]
fn a_process_that_execs_before_the_gateway_looks_is_not_vouched_for() -> Result<()> {
    // The race an attacker would try after the test above: connect as one program and exec
    // another before the gateway reads /proc, so that /proc shows the second program. The daemon
    // is stopped so that the exec surely comes first; what /proc shows then (the exe of `sleep`)
    // must not be recorded as the connecting program.
    let s = Setup::new("")?;
    let dst = s.v4(7000);
    let dir = s.daemon.dir.path();
    let (ready, go) = (dir.join("ready"), dir.join("go"));
    let script = format!(
        "echo $$ > {ready}; for _ in $(seq 200); do [ -e {go} ] && break; sleep 0.05; done; exec 3<>/dev/tcp/{ip}/7000 && exec sleep 30",
        ready = ready.display(),
        go = go.display(),
        ip = s.ns.remote_ip
    );
    let job = gateway_e2e::Process::spawn(
        "exec-job",
        Command::new(gateway_e2e::gateway_bin())
            .arg("--control-socket")
            .arg(&s.daemon.control_socket)
            .args(["run", "--", "bash", "-c", &script]),
        dir.join("exec-job.log"),
    )?;
    let pid_of_job = || {
        std::fs::read_to_string(&ready)
            .ok()?
            .trim()
            .parse::<u32>()
            .ok()
    };
    assert!(
        wait_until(Duration::from_secs(10), || pid_of_job().is_some()),
        "the job did not start: {}",
        job.output()
    );
    let pid = pid_of_job().unwrap_or_default();
    // The job's command (bash, then sleep) is a child of `gateway run`: ended by pid, also when an
    // assertion fails (it lives 30 s, longer than this test).
    struct KillOnDrop(u32);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            // SAFETY: kill(2) on the job command this test started, still alive (see above).
            unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
        }
    }
    let command = KillOnDrop(pid);
    let exe = || std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
    {
        let _frozen = s.daemon.freeze();
        std::fs::write(&go, "")?;
        assert!(
            wait_until(Duration::from_secs(10), || exe().ends_with("sleep")),
            "the job did not connect and exec: {} (exe {})",
            job.output(),
            exe().display()
        );
    }
    assert!(
        wait_until(Duration::from_secs(10), || s
            .session_for(&dst)
            .is_ok_and(|v| !v.is_empty())),
        "no session recorded: {}",
        s.daemon.log()
    );
    let session = &s.session_for(&dst)?[0];
    let process = &s.daemon.show_session(&session["id"])?["process"];
    assert_eq!(process["pid"], pid, "{process}");
    assert_eq!(process["comm"], "bash", "as captured at connect: {process}");
    assert_eq!(
        process["verified"], false,
        "vouched for what /proc showed after the exec: {process}"
    );
    assert!(
        process["exe"].is_null() && process["cmdline"].is_null(),
        "the exec'd program recorded as the connecting one: {process}"
    );
    assert!(
        exe().ends_with("sleep"),
        "the job ended early: {}",
        job.output()
    );
    drop(command);
    drop(job);
    Ok(())
}

#[test]
fn a_full_disk_stops_service_instead_of_serving_unrecorded() -> Result<()> {
    // An agent that fills the disk the gateway records on must not get unrecorded access: every
    // connection the job got through is in the record, the rest were refused; no job starts.
    let mut s = Setup::new("")?;
    let dst = s.v4(7000);
    let disk = s.daemon.restart_on_small_disk("4m")?;
    assert_eq!(
        s.daemon.probe_in_job(&["connect", &dst, "before"])?["ok"],
        true
    );

    // A job already running when the disk fills up: it connects 20 times once told to.
    let (ready, go) = (
        s.daemon.dir.path().join("ready"),
        s.daemon.dir.path().join("go"),
    );
    let script = format!(
        "touch {ready}; for _ in $(seq 200); do [ -e {go} ] && break; sleep 0.05; done; for i in $(seq 20); do \"$0\" connect {dst} full-$i; done",
        ready = ready.display(),
        go = go.display()
    );
    let job = Command::new(gateway_e2e::gateway_bin())
        .arg("--control-socket")
        .arg(&s.daemon.control_socket)
        .args(["run", "--", "bash", "-c", &script])
        .arg(probe_bin())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    assert!(
        wait_until(Duration::from_secs(10), || ready.exists()),
        "the job did not start"
    );
    disk.fill()?;
    std::fs::write(&go, "")?;
    let out = job.wait_with_output()?;
    let results: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(
        results.len(),
        20,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The journal's last page may still hold a record or two; the attempts after it are refused.
    let served = results.iter().filter(|v| v["ok"] == true).count();
    assert!(served < 20, "served all 20 connections with a full disk");
    assert!(
        s.daemon
            .log()
            .contains("cannot record session; refusing the connection"),
        "{}",
        s.daemon.log()
    );
    // `gateway status` says so, for people and for monitoring.
    let status = s.daemon.cli_json(&["status", "--json"])?;
    let failing = &status["recording"]["journal_failing"];
    assert!(
        failing["error"]
            .as_str()
            .is_some_and(|e| e.contains("No space left on device")),
        "{status}"
    );
    assert!(failing["since"].is_string(), "{status}");
    let shown = s.daemon.cli(&["status"]);
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.contains("FAILING since"), "{shown}");
    // And no new job starts unrecorded.
    let refused = s
        .daemon
        .run_job(&[], probe_bin(), &["connect", &dst, "new-job"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("disk is full"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    disk.free()?;
    assert_eq!(
        s.daemon.probe_in_job(&["connect", &dst, "after"])?["ok"],
        true
    );
    let status = s.daemon.cli_json(&["status", "--json"])?;
    assert!(status["recording"]["journal_failing"].is_null(), "{status}");
    assert!(
        status["recording"]["free_bytes"].as_u64() > Some(0),
        "{status}"
    );
    // Everything served is recorded: before, after, and each one served while the disk was full.
    let allowed = || {
        s.session_for(&dst)
            .map(|l| l.iter().filter(|x| x["decision"] == "allow").count())
            .unwrap_or(0)
    };
    assert!(
        wait_until(Duration::from_secs(10), || allowed() == served + 2),
        "served {served} with a full disk (+2), recorded {}: {:?}",
        allowed(),
        s.session_for(&dst)?
    );
    // Whatever SQLite could not take meanwhile has been folded in.
    assert!(
        wait_until(Duration::from_secs(10), || {
            s.daemon.cli_json(&["status", "--json"]).is_ok_and(|st| {
                st["recording"]["apply_failing"].is_null() && st["recording"]["unapplied"] == 0
            })
        }),
        "{:?}",
        s.daemon.cli_json(&["status", "--json"])
    );
    drop(disk);
    Ok(())
}

/// A masking rule for another target (no rule may name a tcp target): what the refused
/// process typed is recorded masked all the same.
const MASKING_ELSEWHERE: &str = r#"
[[targets]]
name = "api"
protocol = "http"
address = "{v4}:7080"
[targets.http]
tls = "none"

[[masking]]
name = "api-pii"
targets = ["api"]
detectors = ["us_ssn"]
"#;

#[test]
fn a_job_over_its_connection_limit_is_refused_and_recorded_until_it_closes_some() -> Result<()> {
    // One job must not use up the gateway for every other one: it holds its limit of connections
    // open, the next is refused and recorded; once it closes them it is served again.
    let s = Setup::with_body("max_connections_per_job = 3", MASKING_ELSEWHERE)?;
    let dst = s.v4(7000);
    let ip = s.ns.remote_ip.to_string();
    // The three are served (their greetings read) before the fourth connects: the gateway
    // handles connections concurrently, and otherwise any one of the four could be the one over.
    let script = format!(
        "exec 3<>/dev/tcp/{ip}/7000 4<>/dev/tcp/{ip}/7000 5<>/dev/tcp/{ip}/7000; \
         read -r g <&3; read -r g <&4; read -r g <&5; \
         \"$0\" connect {dst} ssn=123-45-6789; \
         exec 3>&- 4>&- 5>&-; \
         for _ in $(seq 50); do r=$(\"$0\" connect {dst} again); case \"$r\" in *'\"ok\":true'*) break;; esac; sleep 0.1; done; echo \"$r\""
    );
    let out = s.daemon.run_job(
        &[],
        "bash",
        &["-c", &script, &probe_bin().display().to_string()],
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(lines.len(), 2, "{out:?}");
    assert_eq!(
        lines[0]["ok"], false,
        "the fourth connection was served: {}",
        lines[0]
    );
    assert_eq!(
        lines[1]["ok"], true,
        "not served again after closing: {}",
        lines[1]
    );
    // Another job has its own limit meanwhile.
    assert_eq!(
        s.daemon.probe_in_job(&["connect", &dst, "other"])?["ok"],
        true
    );

    let denied: Vec<Value> = s
        .session_for(&dst)?
        .into_iter()
        .filter(|x| x["decision"] == "deny")
        .collect();
    assert_eq!(denied.len(), 1, "{denied:?}");
    let shown = s.daemon.show_session(&denied[0]["id"])?;
    assert!(
        shown["reason"]
            .as_str()
            .is_some_and(|r| r.contains("server.max_connections_per_job")),
        "{shown}"
    );
    // Refused before a byte is read, to a target no masking rule names: its command line and
    // its shell's are recorded masked.
    let process = &shown["process"];
    assert_eq!(process["cmdline"][3], "ssn=[masked:us_ssn]", "{process}");
    assert!(
        process["ancestry"][0]["cmdline"]
            .to_string()
            .contains("ssn=[masked:us_ssn]"),
        "{process}"
    );
    assert!(!shown.to_string().contains("123-45-6789"), "{shown}");
    Ok(())
}

#[test]
fn a_preconnect_target_hands_out_its_spare_once_and_closes_it_unused() -> Result<()> {
    let s = Setup::with_body(
        "",
        r#"
[[targets]]
name = "echo-spare"
protocol = "tcp"
address = "{v4}:7001"
preconnect = true

[[rules]]
name = "jobs-may-echo-spare"
action = "allow"
targets = ["echo-spare"]
unauthenticated = true
"#,
    )?;
    let dst = s.v4(7001);
    let greeted = |v: &Value| -> String {
        v["greeting"].as_str().unwrap_or_default().trim()["hello ".len()..].to_string()
    };
    let first = s.daemon.probe_in_job(&["connect", &dst, "one"])?;
    assert_eq!(first["echo"], "one", "{first}");
    // The allowed connection leaves a spare to the same destination behind it.
    assert!(
        wait_until(Duration::from_secs(5), || s.echo.accepted().len() == 2),
        "no spare connection: {:?}",
        s.echo.accepted()
    );
    let spare = s
        .echo
        .accepted()
        .into_iter()
        .find(|p| *p != greeted(&first))
        .unwrap();
    // The next connection takes it: the server's greeting names the spare's address.
    let second = s.daemon.probe_in_job(&["connect", &dst, "two"])?;
    assert_eq!(second["echo"], "two", "{second}");
    assert_eq!(second["peer"], dst.as_str(), "{second}");
    assert_eq!(greeted(&second), spare, "{second}");
    let sessions = s.session_for(&dst)?;
    assert_eq!(sessions.len(), 2, "{sessions:?}");
    let preconnected = |session: &Value| -> Result<bool> {
        let shown = s.daemon.show_session(&session["id"])?;
        let event = shown["events"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["kind"] == "upstream_connected")
            .cloned()
            .unwrap_or_default();
        Ok(event["detail"]["preconnected"] == true)
    };
    assert!(!preconnected(&sessions[0])?);
    assert!(preconnected(&sessions[1])?);

    // The second connection left a spare too; nobody takes it, so it is closed after its idle time
    // (2 s), and no further one is opened.
    assert!(
        wait_until(Duration::from_secs(5), || s.echo.accepted().len() == 3),
        "{:?}",
        s.echo.accepted()
    );
    let unused = s.echo.accepted()[2..]
        .iter()
        .find(|p| **p != spare && **p != greeted(&first))
        .cloned()
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || s
            .echo
            .closed()
            .contains(&unused)),
        "the unused spare {unused} was not closed: {:?}",
        s.echo.closed()
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(s.echo.accepted().len(), 3, "{:?}", s.echo.accepted());
    Ok(())
}

#[test]
fn a_process_outside_the_job_is_not_intercepted() -> Result<()> {
    let s = Setup::new("")?;
    let out = Command::new(probe_bin())
        .args(["connect", &s.v4(7000)])
        .output()?;
    let v: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(v["ok"], true, "{v}");
    // Straight from the host's veth address, no listener in between, nothing recorded.
    assert!(
        v["local"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}:", s.ns.host_ip)),
        "{v}"
    );
    assert!(s.daemon.sessions()?.is_empty());
    Ok(())
}

#[test]
fn ipv6_and_ipv4_mapped_destinations_are_intercepted() -> Result<()> {
    let s = Setup::new("")?;
    let v6 = format!("[{}]:7000", s.ns.remote_ip6);
    let v = s.daemon.probe_in_job(&["connect", &v6])?;
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["peer"], v6.as_str());
    assert!(v["local"].as_str().unwrap().starts_with("[::1]:"), "{v}");
    assert!(
        v["greeting"]
            .as_str()
            .unwrap()
            .starts_with(&format!("hello [{}]:", s.ns.host_ip6)),
        "{v}"
    );

    // An IPv4 target reached through an IPv6 socket with an IPv4-mapped address.
    let mapped = format!("[::ffff:{}]:7000", s.ns.remote_ip);
    let v = s.daemon.probe_in_job(&["connect", &mapped])?;
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["peer"], mapped.as_str());
    assert!(
        v["local"]
            .as_str()
            .unwrap()
            .starts_with("[::ffff:127.0.0.1]:"),
        "{v}"
    );

    let sessions = s.daemon.sessions()?;
    let targets: Vec<(&str, &str)> = sessions
        .iter()
        .map(|s| {
            (
                s["target"].as_str().unwrap_or("-"),
                s["destination"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(targets.contains(&("echo6", v6.as_str())), "{targets:?}");
    assert!(
        targets.contains(&("echo", s.v4(7000).as_str())),
        "{targets:?}"
    );
    Ok(())
}

#[test]
fn a_job_in_a_network_namespace_of_its_own_stays_covered_and_reaches_targets_only_through_the_gateway()
-> Result<()> {
    // An unprivileged job creates a user and network namespace (where it holds CAP_NET_ADMIN) and
    // tries from there: the cgroup hooks still apply; the target is reached through the listener
    // the daemon opens in that namespace, and nothing else is reached.
    let s = Setup::new("")?;
    let before = s.echo.accepted().len();
    let inner = format!(
        "ip link set lo up && echo \"{{\\\"netns\\\": \\\"$(readlink /proc/self/ns/net)\\\"}}\"; {p} connect {target}; {p} connect {other}",
        p = probe_bin().display(),
        target = s.v4(7000),
        other = s.v4(7001),
    );
    let out = s.daemon.run_job(
        &["--user", "nobody"],
        "unshare",
        &["--user", "--map-root-user", "--net", "sh", "-c", &inner],
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(lines.len(), 3, "{out:?}");
    let own = std::fs::read_link("/proc/self/ns/net")?;
    assert_ne!(
        lines[0]["netns"],
        own.display().to_string(),
        "the job did not get a namespace of its own"
    );
    // The target is redirected to the gateway's listener in the new namespace.
    assert_eq!(lines[1]["echo"], "ping", "{}", lines[1]);
    assert!(
        lines[1]["local"]
            .as_str()
            .is_some_and(|l| l.starts_with("127.0.0.1:")),
        "{}",
        lines[1]
    );
    // A destination outside the target set is still refused by the hook.
    assert_eq!(errno(&lines[2]), Some(libc::EPERM as i64), "{}", lines[2]);
    // Exactly the one connection, made by the gateway, reached the target.
    assert_eq!(
        s.echo.accepted().len(),
        before + 1,
        "{:?}",
        s.echo.accepted()
    );
    let sessions = s.daemon.sessions()?;
    assert!(
        sessions
            .iter()
            .any(|x| x["target"] == "echo" && x["decision"] == "allow"),
        "{sessions:#?}"
    );
    Ok(())
}

#[test]
fn enforce_mode_refuses_destinations_outside_the_target_set() -> Result<()> {
    let s = Setup::new("mode = \"enforce\"")?;
    let before = s.echo.accepted().len();
    let v = s.daemon.probe_in_job(&["connect", &s.v4(7001)])?;
    assert_eq!(errno(&v), Some(libc::EPERM as i64), "{v}");
    assert_eq!(
        s.echo.accepted().len(),
        before,
        "the refused connect must not reach the host"
    );
    assert!(wait_until(Duration::from_secs(5), || {
        s.session_for(&s.v4(7001))
            .is_ok_and(|l| l.len() == 1 && l[0]["decision"] == "deny")
    }));
    Ok(())
}

#[test]
fn audit_mode_lets_non_targets_through_and_records_them() -> Result<()> {
    let s = Setup::new("mode = \"audit\"")?;
    let v = s.daemon.probe_in_job(&["connect", &s.v4(7001)])?;
    assert_eq!(v["ok"], true, "{v}");
    // Direct (not through the gateway) …
    assert!(
        v["local"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}:", s.ns.host_ip)),
        "{v}"
    );
    // … and recorded with the process that made it.
    assert!(
        wait_until(Duration::from_secs(5), || {
            s.session_for(&s.v4(7001)).is_ok_and(|l| {
                l.len() == 1 && l[0]["decision"] == "audit" && l[0]["pid"] == v["pid"]
            })
        }),
        "{:?}",
        s.daemon.sessions()?
    );
    // Targets are still served by the gateway in audit mode.
    let v = s.daemon.probe_in_job(&["connect", &s.v4(7000)])?;
    assert!(
        v["local"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{v}"
    );
    Ok(())
}

#[test]
fn udp_raw_sockets_and_other_bypasses_are_refused() -> Result<()> {
    let s = Setup::new("")?;
    // Restart with the namespace host as the only DNS resolver.
    let resolver = s.ns.remote_ip.to_string();
    let s = {
        let mut s = s;
        let text = std::fs::read_to_string(&s.daemon.config_path)?.replacen(
            "[server]\n",
            &format!("[server]\ndns_resolvers = [\"{resolver}\"]\n"),
            1,
        );
        std::fs::write(&s.daemon.config_path, text)?;
        s.daemon.restart()?;
        s
    };
    let eperm = Some(libc::EPERM as i64);
    // Packet sockets: a root job started by `gateway run` has no CAP_NET_RAW (nor the other
    // capabilities that would let it tamper with the gateway) in its bounding set, so not even a
    // setuid or file-capability binary regains them. Where the kernel lets BPF LSM programs load,
    // the socket-family guard refuses them as well; the daemon says which applies.
    let status = s.daemon.cli_json(&["status", "--json"])?;
    let guard = status["socket_family_guard"].as_str().unwrap_or_default();
    assert!(
        guard == "active" || guard.starts_with("unavailable: "),
        "{status}"
    );
    let out = s
        .daemon
        .run_job(&[], "sh", &["-c", "grep CapBnd /proc/self/status"]);
    let bounding = String::from_utf8_lossy(&out.stdout);
    let bounding = u64::from_str_radix(bounding.trim().trim_start_matches("CapBnd:").trim(), 16)?;
    for (name, bit) in [
        ("CAP_NET_RAW", 13),
        ("CAP_NET_ADMIN", 12),
        ("CAP_SYS_ADMIN", 21),
        ("CAP_BPF", 39),
        ("CAP_SYS_PTRACE", 19),
    ] {
        assert_eq!(
            bounding & (1 << bit),
            0,
            "{name} left in a root job's bounding set: {bounding:x}"
        );
    }
    assert_ne!(
        bounding & 1,
        0,
        "CAP_CHOWN is not the gateway's business: {bounding:x}"
    );
    let unix = s.daemon.probe_in_job(&["unix"])?;
    assert_eq!(
        unix["ok"], true,
        "unix sockets stay usable in a job: {unix}"
    );
    let dns = s.daemon.probe_in_job(&["udp", &format!("{resolver}:53")])?;
    assert_eq!(
        dns["ok"], true,
        "DNS to the configured resolver must pass: {dns}"
    );
    for (what, args) in [
        ("UDP to a non-resolver", vec!["udp".to_string(), s.v4(9999)]),
        (
            "UDP to the resolver on another port",
            vec!["udp".to_string(), format!("{resolver}:5353")],
        ),
        ("connected UDP", vec!["udp-connect".to_string(), s.v4(9999)]),
        ("raw socket", vec!["raw".to_string()]),
        ("packet socket", vec!["packet".to_string()]),
        ("vsock socket", vec!["vsock".to_string()]),
        ("io_uring", vec!["io-uring".to_string()]),
        ("MPTCP socket", vec!["mptcp".to_string()]),
        (
            "TCP Fast Open to a non-target",
            vec!["tfo".to_string(), s.v4(7001)],
        ),
        (
            "binding the gateway's listener port",
            vec!["bind".to_string(), format!("0.0.0.0:{}", s.daemon.port)],
        ),
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let v = s.daemon.probe_in_job(&args)?;
        assert_eq!(errno(&v), eperm, "{what} must be refused with EPERM: {v}");
    }
    assert!(
        wait_until(Duration::from_secs(5), || {
            s.daemon.sessions().is_ok_and(|l| {
                ["udp", "socket", "bind", "tcp"].iter().all(|p| {
                    l.iter()
                        .any(|x| x["protocol"] == *p && x["decision"] == "deny")
                })
            })
        }),
        "{:?}",
        s.daemon.sessions()?
    );
    Ok(())
}

#[test]
fn a_direct_connection_to_the_listener_is_refused_in_a_job_and_recorded_outside_one() -> Result<()>
{
    let s = Setup::new("")?;
    let listener = format!("127.0.0.1:{}", s.daemon.port);
    // From inside a job: nothing the gateway could serve, refused at connect() and recorded for
    // the job (within its budget, like any refusal).
    let inside = s.daemon.probe_in_job(&["connect", &listener])?;
    assert_eq!(errno(&inside), Some(libc::EPERM as i64), "{inside}");
    // From a host process: reaches the listener, which closes it and records an anomaly.
    let out = Command::new(probe_bin())
        .args(["connect", &listener])
        .output()?;
    let outside: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(outside["ok"], false, "{outside}");
    assert!(
        wait_until(Duration::from_secs(5), || {
            s.daemon.sessions().is_ok_and(|l| {
                l.iter().any(|x| {
                    x["kind"] == "kernel"
                        && x["decision"] == "deny"
                        && x["job_id"].is_string()
                        && x["pid"] == inside["pid"]
                }) && l
                    .iter()
                    .filter(|x| x["kind"] == "anomaly" && x["decision"] == "deny")
                    .count()
                    == 1
            })
        }),
        "{:?}",
        s.daemon.sessions()?
    );
    Ok(())
}

/// A cgroup of the test's own, attached as a job (`gateway attach`); returns it and the job's id.
fn attached_job(s: &Setup, name: &str) -> Result<(TestCgroup, String)> {
    let cg = TestCgroup::new(name)?;
    let job = s
        .daemon
        .cli_json(&["attach", "--cgroup", cg.path.to_str().unwrap(), "--json"])?;
    let id = job["id"].as_str().unwrap_or_default().to_string();
    Ok((cg, id))
}

/// Sessions of one job (`None`: of no job) of one kind.
fn sessions_of(s: &Setup, job: Option<&str>, kind: &str) -> Result<Vec<Value>> {
    Ok(s.daemon
        .sessions()?
        .into_iter()
        .filter(|x| x["kind"] == kind && x["job_id"].as_str() == job)
        .collect())
}

/// What the `suppressed` summaries of a job (`None`: of no job) counted, for counts whose `what`
/// is `what` (`None`: all of them).
fn suppressed_count(s: &Setup, job: Option<&str>, what: Option<&str>) -> Result<u64> {
    let mut total = 0;
    for summary in sessions_of(s, job, "suppressed")? {
        let shown = s.daemon.show_session(&summary["id"])?;
        for event in shown["events"].as_array().into_iter().flatten() {
            for c in event["detail"]["counts"].as_array().into_iter().flatten() {
                if what.is_none_or(|w| c["what"] == w) {
                    total += c["count"].as_u64().unwrap_or(0);
                }
            }
        }
    }
    Ok(total)
}

/// How many outcomes of a probe tally had `errno` (0: success).
fn tallied(v: &Value, errno: i32) -> u64 {
    v["errnos"][errno.to_string()].as_u64().unwrap_or(0)
}

#[test]
fn one_jobs_flood_of_refusals_is_counted_not_stored_and_hides_no_other_jobs() -> Result<()> {
    // Refusals cost the job nothing and the store a row each: one job flooding them must neither
    // fill the store nor crowd out another job's records (the kernel's ring buffer is shared).
    let s = Setup::new("records_per_second_per_job = 5")?;
    let (flooder, flooder_id) = attached_job(&s, "flood")?;
    let (other, other_id) = attached_job(&s, "other")?;
    const DATAGRAMS: u64 = 100_000;
    let flood = Command::new(probe_bin())
        .arg("--cgroup")
        .arg(&flooder.path)
        .args(["flood-udp", &s.v4(9999), &DATAGRAMS.to_string()])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    // Meanwhile the other job's refusals, each to its own destination.
    for port in [9101, 9102, 9103] {
        let v = other.probe(&["connect", &s.v4(port)])?;
        assert_eq!(errno(&v), Some(libc::EPERM as i64), "{v}");
    }
    let flood: Value = serde_json::from_slice(&flood.wait_with_output()?.stdout)?;
    assert_eq!(tallied(&flood, libc::EPERM), DATAGRAMS, "{flood}");

    // Every refusal of the other job is on record, one by one.
    assert!(
        wait_until(Duration::from_secs(10), || {
            sessions_of(&s, Some(&other_id), "kernel").is_ok_and(|l| {
                [9101, 9102, 9103]
                    .iter()
                    .all(|p| l.iter().any(|x| x["destination"] == s.v4(*p)))
            })
        }),
        "{:?}",
        sessions_of(&s, Some(&other_id), "kernel")?
    );
    // The flood: a few rows of its own, and every other datagram counted in summaries for the
    // job, so that recorded + counted is exactly what it sent.
    let mut last = (0, 0);
    let accounted = wait_until(Duration::from_secs(15), || {
        let rows = sessions_of(&s, Some(&flooder_id), "kernel")
            .map(|l| l.len() as u64)
            .unwrap_or(0);
        let counted = suppressed_count(&s, Some(&flooder_id), None).unwrap_or(0);
        last = (rows, counted);
        rows + counted == DATAGRAMS
    });
    assert!(accounted, "rows, counted: {last:?} of {DATAGRAMS}");
    assert!(last.1 > 0 && last.0 < DATAGRAMS / 10, "{last:?}");
    let summary = &sessions_of(&s, Some(&flooder_id), "suppressed")?[0];
    let shown = s.daemon.show_session(&summary["id"])?;
    assert!(
        shown["reason"]
            .as_str()
            .is_some_and(|r| r.contains("server.records_per_second_per_job")),
        "{shown}"
    );
    Ok(())
}

#[test]
fn in_audit_mode_a_flood_of_one_kind_does_not_hide_a_jobs_other_traffic() -> Result<()> {
    // Audit mode lets non-targets through and records them: a job flooding datagrams must not
    // thereby keep its one TCP connection to a non-target off the record.
    let s = Setup::new("mode = \"audit\"\nrecords_per_second_per_job = 5")?;
    let (job, id) = attached_job(&s, "audit")?;
    let flood = job.probe(&["flood-udp", &s.v4(9999), "20000"])?;
    assert_eq!(tallied(&flood, 0), 20000, "{flood}");
    let direct = s.v4(7001);
    let v = job.probe(&["connect", &direct])?;
    assert_eq!(v["ok"], true, "audit mode lets it through: {v}");
    assert!(
        wait_until(Duration::from_secs(10), || {
            sessions_of(&s, Some(&id), "kernel").is_ok_and(|l| {
                l.iter()
                    .any(|x| x["destination"] == direct && x["decision"] == "audit")
            })
        }),
        "{:?}",
        sessions_of(&s, Some(&id), "kernel")?
    );
    assert!(
        wait_until(Duration::from_secs(10), || {
            let rows = sessions_of(&s, Some(&id), "kernel")
                .map(|l| l.iter().filter(|x| x["protocol"] == "udp").count() as u64)
                .unwrap_or(0);
            rows + suppressed_count(&s, Some(&id), Some("udp")).unwrap_or(0) == 20000
        }),
        "{:?}",
        sessions_of(&s, Some(&id), "suppressed")?
    );
    Ok(())
}

#[test]
fn a_jobs_denied_connections_are_recorded_up_to_its_budget_and_counted_beyond() -> Result<()> {
    // Connections the gateway refuses (here: no rule allows the target) are a row each; a job
    // opening them in a loop gets its budget's worth of rows and the rest counted.
    let s = Setup::with_body(
        "records_per_second_per_job = 5",
        "[[targets]]\nname = \"forbidden\"\nprotocol = \"tcp\"\npath = \"proxy\"\naddress = \"{v4}:7001\"\n",
    )?;
    let (job, id) = attached_job(&s, "denied")?;
    let (other, other_id) = attached_job(&s, "denied-other")?;
    const CONNECTIONS: u64 = 200;
    let dst = s.v4(7001);
    let v = job.probe(&["flood-connect", &dst, &CONNECTIONS.to_string(), "serve"])?;
    assert_eq!(tallied(&v, 0), CONNECTIONS, "{v}");
    // Another job's refusal in the same second is recorded: budgets are per job.
    let o = other.probe(&["connect", &dst])?;
    assert_eq!(o["ok"], false, "{o}");
    assert!(
        wait_until(Duration::from_secs(5), || {
            sessions_of(&s, Some(&other_id), "proxied").is_ok_and(|l| l.len() == 1)
        }),
        "{:?}",
        s.daemon.sessions()?
    );
    let mut last = (0, 0);
    let accounted = wait_until(Duration::from_secs(10), || {
        let rows = sessions_of(&s, Some(&id), "proxied")
            .map(|l| l.iter().filter(|x| x["decision"] == "deny").count() as u64)
            .unwrap_or(0);
        let counted = suppressed_count(&s, Some(&id), Some("denied_connections")).unwrap_or(0);
        last = (rows, counted);
        rows + counted == CONNECTIONS
    });
    assert!(accounted, "rows, counted: {last:?} of {CONNECTIONS}");
    assert!(last.1 > 0, "{last:?}");
    Ok(())
}

#[test]
fn a_job_cannot_hold_more_connects_pending_than_its_limit_nor_evict_another_jobs() -> Result<()> {
    // While the gateway is busy (frozen here) redirected connects wait in a table shared by all
    // jobs. One job must neither fill it nor push out another job's waiting connect: its connects
    // over the limit are refused, and the other job's is served once the gateway is back.
    let s = Setup::new("max_pending_connections_per_job = 8")?;
    let (flooder, flooder_id) = attached_job(&s, "pending")?;
    let (waiter, _) = attached_job(&s, "waiting")?;
    let (churner, _) = attached_job(&s, "churn")?;
    let dst = s.v4(7000);
    let frozen = s.daemon.freeze();
    let mut waiting = Command::new(probe_bin())
        .arg("--cgroup")
        .arg(&waiter.path)
        .args(["connect-then", &dst])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut waiting_out = std::io::BufReader::new(waiting.stdout.take().expect("stdout"));
    let mut line = String::new();
    std::io::BufRead::read_line(&mut waiting_out, &mut line)?;
    assert!(line.contains("\"connected\":true"), "{line}");

    // Held open: 8 wait, the rest are refused at connect().
    let mut held = Command::new(probe_bin())
        .arg("--cgroup")
        .arg(&flooder.path)
        .args(["flood-connect", &dst, "40", "hold"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut held_out = std::io::BufReader::new(held.stdout.take().expect("stdout"));
    let mut tally = String::new();
    std::io::BufRead::read_line(&mut held_out, &mut tally)?;
    let tally: Value = serde_json::from_str(&tally)?;
    assert_eq!(tallied(&tally, libc::EPERM), 32, "{tally}");
    drop(held.stdin.take());
    held.wait()?;
    // Many more from a third job, each closed at once: from more client addresses than the table
    // holds, and from every CPU (a table with per-CPU lists only evicts what the CPU adding to it
    // has let go of). None of them may cost the waiting connect its record.
    for cpu in 0..std::thread::available_parallelism().map_or(1, usize::from) {
        let out = Command::new("taskset")
            .args(["-c", &cpu.to_string()])
            .arg(probe_bin())
            .arg("--cgroup")
            .arg(&churner.path)
            .args(["flood-connect", &dst, "150000", "spread"])
            .output()?;
        let churn: Value = serde_json::from_slice(&out.stdout)?;
        assert!(
            tallied(&churn, libc::EINPROGRESS) + tallied(&churn, 0) > 0,
            "{churn}"
        );
    }
    drop(frozen);

    let served: Value = {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut waiting_out, &mut line)?;
        waiting.wait()?;
        serde_json::from_str(&line)?
    };
    assert_eq!(
        served["ok"], true,
        "the waiting connect was not served: {served}"
    );
    assert!(
        served["greeting"]
            .as_str()
            .is_some_and(|g| g.starts_with("hello ")),
        "{served}"
    );
    // The refusals are on record, for the job that made them.
    assert!(
        wait_until(Duration::from_secs(10), || {
            sessions_of(&s, Some(&flooder_id), "kernel").is_ok_and(|l| {
                l.iter()
                    .any(|x| x["decision"] == "deny" && x["destination"] == dst)
            })
        }),
        "{:?}",
        s.daemon.sessions()?
    );
    let refusal = sessions_of(&s, Some(&flooder_id), "kernel")?
        .into_iter()
        .find(|x| x["destination"] == dst)
        .expect("a refusal");
    let shown = s.daemon.show_session(&refusal["id"])?;
    assert!(
        shown["reason"]
            .as_str()
            .is_some_and(|r| r.contains("server.max_pending_connections_per_job")),
        "{shown}"
    );
    Ok(())
}

#[test]
fn a_jobs_child_cgroups_share_its_limits() -> Result<()> {
    // A job may create cgroups below its own: its limits and budgets are the job's (the cgroup
    // the programs are attached to), not each child's, or a job would multiply them at will.
    let s = Setup::new("max_pending_connections_per_job = 8")?;
    let (job, _) = attached_job(&s, "children")?;
    let children: Vec<std::path::PathBuf> = ["a", "b"].iter().map(|c| job.path.join(c)).collect();
    for c in &children {
        std::fs::create_dir(c)?;
    }
    let dst = s.v4(7000);
    let _frozen = s.daemon.freeze();
    let mut holders = Vec::new();
    let mut tallies = Vec::new();
    for c in &children {
        let mut holder = Command::new(probe_bin())
            .arg("--cgroup")
            .arg(c)
            .args(["flood-connect", &dst, "8", "hold"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(holder.stdout.as_mut().expect("stdout")),
            &mut line,
        )?;
        tallies.push(serde_json::from_str::<Value>(&line)?);
        holders.push(holder);
    }
    for mut h in holders {
        drop(h.stdin.take());
        h.wait()?;
    }
    assert_eq!(tallied(&tallies[0], libc::EPERM), 0, "{tallies:?}");
    assert_eq!(tallied(&tallies[1], libc::EPERM), 8, "{tallies:?}");
    Ok(())
}

#[test]
fn a_long_command_line_is_stored_cut_at_4_kib_and_marked() -> Result<()> {
    // The job chooses its arguments: megabytes of them would be stored (and cached) for every
    // connection it opens.
    let s = Setup::new("")?;
    let long = "a".repeat(100 * 1024);
    let v = s
        .daemon
        .probe_in_job(&["connect", &s.v4(7000), "ping", &long])?;
    assert_eq!(v["ok"], true, "{v}");
    let session = &s.session_for(&s.v4(7000))?[0];
    let shown = s.daemon.show_session(&session["id"])?;
    let process = &shown["process"];
    let stored = process["cmdline"].to_string().len();
    assert_eq!(process["verified"], true, "{stored} bytes of cmdline");
    assert_eq!(
        process["cmdline_cut"], true,
        "not marked as cut; {stored} bytes of cmdline"
    );
    let args: Vec<&str> = process["cmdline"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(args[1..3], ["connect", s.v4(7000).as_str()], "{args:?}");
    let bytes = args.join("\0").len();
    assert!(bytes <= 4096, "{bytes} bytes of command line stored");
    // The CLI says so too.
    let text = String::from_utf8_lossy(
        &s.daemon
            .cli(&["sessions", "show", &session["id"].to_string()])
            .stdout,
    )
    .into_owned();
    assert!(text.contains("only the first 4 KiB are kept"), "{text}");
    Ok(())
}

#[test]
fn upstream_refusal_is_passed_back_as_a_reset() -> Result<()> {
    let s = Setup::new("")?;
    let v = s.daemon.probe_in_job(&["connect", &s.v4(7009)])?;
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(errno(&v), Some(libc::ECONNRESET as i64), "{v}");
    let session = s.session_for(&s.v4(7009))?.remove(0);
    let shown = s.daemon.show_session(&session["id"])?;
    assert!(
        shown["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "upstream_error"),
        "{shown}"
    );
    Ok(())
}

#[test]
fn a_target_without_an_allowing_rule_is_refused() -> Result<()> {
    let id = unique_id();
    let dir = TempDir::new(&format!("p{id}"));
    let ns = Netns::new(&id)?;
    let echo = EchoServer::start(&ns, dir.path(), &[format!("{}:7000", ns.remote_ip)])?;
    let body = format!(
        "[[targets]]\nname = \"echo\"\nprotocol = \"tcp\"\naddress = \"{}:7000\"\n",
        ns.remote_ip
    );
    let daemon = Daemon::start(DaemonConfig {
        server: String::new(),
        body,
    })?;
    let v = daemon.probe_in_job(&["connect", &format!("{}:7000", ns.remote_ip)])?;
    assert_eq!(v["ok"], false, "{v}");
    assert!(
        echo.accepted().is_empty(),
        "a denied connection must not reach the upstream"
    );
    let sessions = daemon.sessions()?;
    assert_eq!(sessions[0]["decision"], "deny");
    let shown = daemon.show_session(&sessions[0]["id"])?;
    assert!(
        shown["reason"].as_str().unwrap().contains("no rule allows"),
        "{shown}"
    );
    Ok(())
}

#[test]
fn kill_9_fails_closed_and_a_restart_restores_service_for_the_same_job() -> Result<()> {
    let mut s = Setup::new("")?;
    let cg = TestCgroup::new("kill9")?;
    let out = s
        .daemon
        .cli(&["attach", "--cgroup", cg.path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(cg.probe(&["connect", &s.v4(7000)])?["ok"], true);

    s.daemon.kill9();
    let accepted = s.echo.accepted().len();
    let down = cg.probe(&["connect", &s.v4(7000)])?;
    assert_eq!(
        errno(&down),
        Some(libc::ECONNREFUSED as i64),
        "must fail, not bypass: {down}"
    );
    let non_target = cg.probe(&["connect", &s.v4(7001)])?;
    assert_eq!(errno(&non_target), Some(libc::EPERM as i64), "{non_target}");
    assert_eq!(
        s.echo.accepted().len(),
        accepted,
        "nothing may reach the host while the gateway is down"
    );

    s.daemon.start_again()?;
    let up = cg.probe(&["connect", &s.v4(7000)])?;
    assert_eq!(up["ok"], true, "{up}");
    assert!(
        up["local"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{up}"
    );
    let status = s.daemon.cli_json(&["status", "--json"])?;
    assert_eq!(
        status["jobs"].as_array().unwrap().len(),
        1,
        "the job is adopted: {status}"
    );
    // The programs attached by the killed daemon and this one share the exec table: the adopted
    // job's processes are still described from /proc.
    let mut sessions = s.session_for(&s.v4(7000))?;
    sessions.sort_by_key(|x| x["id"].as_i64());
    let last = sessions.last().expect("sessions");
    let process = &s.daemon.show_session(&last["id"])?["process"];
    assert_eq!(
        (&process["pid"], &process["verified"]),
        (&up["pid"], &Value::Bool(true)),
        "{process}"
    );
    Ok(())
}

#[test]
fn psql_reaches_postgres_in_a_namespace_through_a_tcp_target() -> Result<()> {
    let id = unique_id();
    let dir = TempDir::new(&format!("q{id}"));
    let ns = Netns::new(&id)?;
    let pg = Postgres::start(&ns, dir.path())?;
    let body = format!(
        "[[targets]]\nname = \"orders-db\"\nprotocol = \"tcp\"\naddress = \"{}:5432\"\n\n[[rules]]\nname = \"db\"\naction = \"allow\"\ntargets = [\"orders-db\"]\nunauthenticated = true\n",
        pg.host
    );
    let daemon = Daemon::start(DaemonConfig {
        server: String::new(),
        body,
    })?;
    let out = Command::new(gateway_e2e::gateway_bin())
        .arg("--control-socket")
        .arg(&daemon.control_socket)
        .args([
            "run",
            "--",
            "psql",
            "-h",
            &pg.host.to_string(),
            "-U",
            "app",
            "-d",
            "app",
            "-AtX",
            "-c",
        ])
        .arg("select 'through ' || host(inet_server_addr())")
        .env("PGPASSWORD", "apppw")
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("through {}", pg.host)
    );
    assert!(wait_until(Duration::from_secs(10), || daemon
        .sessions()
        .is_ok_and(|l| !l.is_empty())));
    let sessions = daemon.sessions()?;
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0]["comm"], "psql");
    assert_eq!(sessions[0]["target"], "orders-db");
    // The end of the session (bytes, time) is written as the relay finishes, just after psql exits.
    assert!(wait_until(Duration::from_secs(5), || {
        daemon.sessions().is_ok_and(|l| {
            l[0]["bytes_down"].as_u64().unwrap_or(0) > 0 && l[0]["ended_at"].is_string()
        })
    }));
    Ok(())
}

#[test]
fn gateway_run_returns_the_exit_status_and_removes_the_job_cgroup() -> Result<()> {
    let s = Setup::new("")?;
    let out = s.daemon.run_job(&[], "sh", &["-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7));
    let out = s.daemon.run_job(&[], "sh", &["-c", "kill -TERM $$"]);
    assert_eq!(out.status.code(), Some(128 + libc::SIGTERM));
    // A daemon left behind by the job is killed with it.
    let out = s
        .daemon
        .run_job(&[], "sh", &["-c", "sleep 300 & echo started"]);
    assert!(out.status.success());
    let leftovers: Vec<_> = std::fs::read_dir(s.daemon.job_parent_path())?
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .collect();
    assert!(leftovers.is_empty(), "job cgroups left: {leftovers:?}");
    let status = s.daemon.cli_json(&["status", "--json"])?;
    assert!(status["jobs"].as_array().unwrap().is_empty(), "{status}");
    // Ending a job is idempotent (the daemon's reaper may end an emptied job before `gateway run`
    // asks); a job that never existed is still an error.
    let probe = s.daemon.probe_in_job(&["connect", &s.v4(7000)])?;
    assert_eq!(probe["ok"], true, "{probe}");
    let sessions = s.session_for(&s.v4(7000))?;
    let job_id = sessions[0]["job_id"].as_str().unwrap().to_string();
    let end = |id: &str| -> Result<Value> {
        use std::io::{BufRead as _, Write as _};
        let stream = std::os::unix::net::UnixStream::connect(&s.daemon.control_socket)?;
        (&stream).write_all(format!("{{\"op\":\"end_job\",\"job_id\":\"{id}\"}}\n").as_bytes())?;
        let mut answer = String::new();
        std::io::BufReader::new(&stream).read_line(&mut answer)?;
        Ok(serde_json::from_str(&answer)?)
    };
    let again = end(&job_id)?;
    assert_eq!(again["job_id"], job_id.as_str(), "{again}");
    let unknown = end("job-000000000000")?;
    assert!(
        unknown["message"]
            .as_str()
            .is_some_and(|m| m.contains("no active job")),
        "{unknown}"
    );
    let missing = s.daemon.run_job(&[], "/nonexistent/cmd", &[]);
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("cannot start"),
        "{missing:?}"
    );
    Ok(())
}

#[test]
fn a_job_cannot_use_the_control_socket_or_leave_its_cgroup() -> Result<()> {
    let s = Setup::new("")?;
    let socket = s.daemon.control_socket.to_str().unwrap().to_string();
    // Even a job running as root is refused by the daemon, before it reads the request: the
    // daemon closes with the request unread (a reset after the answer), or before it was sent.
    let v = s.daemon.probe_in_job(&["control", &socket])?;
    assert_eq!(v["ok"], false, "{v}");
    assert!(
        v["answer"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("inside an agent job"),
        "{v}"
    );
    assert!(
        v["after"] == "reset" || v["write_error"] == libc::EPIPE,
        "the daemon read the request of a caller it refused: {v}"
    );

    // An unprivileged job can neither reach the socket nor move itself out of its cgroup; its
    // connections stay intercepted.
    let root_procs = gateway_e2e::cgroup2_root()?;
    let out = s.daemon.run_job(
        &["--user", "nobody"],
        "sh",
        &[
            "-c",
            &format!(
                "{p} control {socket}; {p} move-cgroup {root}; {p} connect {dst}",
                p = probe_bin().display(),
                root = root_procs.display(),
                dst = s.v4(7000),
            ),
        ],
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{out:?}");
    assert_eq!(
        errno(&lines[0]),
        Some(libc::EACCES as i64),
        "control socket: {}",
        lines[0]
    );
    assert_eq!(lines[1]["ok"], false, "cgroup escape: {}", lines[1]);
    assert_eq!(lines[2]["ok"], true, "{}", lines[2]);
    assert!(
        lines[2]["local"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "still intercepted: {}",
        lines[2]
    );
    let sessions = s.session_for(&s.v4(7000))?;
    assert_eq!(sessions.len(), 1);
    Ok(())
}

#[test]
fn a_job_process_cannot_pass_for_another_by_leaving_its_pid_to_it() -> Result<()> {
    // The daemon judged a control caller by the pid SO_PEERCRED reports: a job process could
    // connect, send its request, hand the connection to a child and exit, so that its pid is
    // reused by a process outside any job before the daemon looks. The test makes that happen for
    // certain: the daemon is frozen, the pid is taken over with clone3(set_tid).
    let s = Setup::new("")?;
    let (cg, _) = attached_job(&s, "pidreuse")?;
    let socket = s.daemon.control_socket.to_str().unwrap().to_string();
    let mut attempts = Vec::new();
    for _ in 0..5 {
        let frozen = s.daemon.freeze();
        let mut orphan = Command::new(probe_bin())
            .arg("--cgroup")
            .arg(&cg.path)
            .args(["control-orphan", &socket])
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        let pid = orphan.id();
        let mut out = std::io::BufReader::new(orphan.stdout.take().expect("stdout"));
        let mut line = String::new();
        std::io::BufRead::read_line(&mut out, &mut line)?;
        assert!(line.contains("\"connected\":true"), "{line}");
        orphan.wait()?; // exited and reaped: its pid is free
        let mut holder = Command::new(probe_bin())
            .args(["hold-pid", &pid.to_string()])
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        let mut held = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(holder.stdout.as_mut().expect("stdout")),
            &mut held,
        )?;
        let took_over = held.contains("\"ok\":true");
        drop(frozen);
        let mut answer = String::new();
        std::io::BufRead::read_line(&mut out, &mut answer)?;
        // The process now holding the pid was started by this test (through the holder).
        if took_over {
            // SAFETY: kill(2) of a process this test created.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        let _ = holder.wait();
        if !took_over {
            attempts.push(held);
            continue; // someone else got the pid first: try again
        }
        let v: Value = serde_json::from_str(&answer)?;
        assert_eq!(v["ok"], false, "a job process got an answer: {v}");
        let message = v["answer"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("has exited"), "{v}");
        return Ok(());
    }
    panic!("could not reuse a pid in 5 attempts: {attempts:?}");
}

#[test]
fn sigterm_stops_the_daemon_gracefully_and_interception_stays_closed() -> Result<()> {
    let mut s = Setup::new("")?;
    let cg = TestCgroup::new("term")?;
    assert!(
        s.daemon
            .cli(&["attach", "--cgroup", cg.path.to_str().unwrap()])
            .status
            .success()
    );
    let status = s.daemon.terminate().expect("daemon was running");
    assert!(status.success(), "{status:?}\n{}", s.daemon.log());
    assert!(
        !s.daemon.control_socket.exists(),
        "control socket removed on shutdown"
    );
    let v = cg.probe(&["connect", &s.v4(7000)])?;
    assert_eq!(errno(&v), Some(libc::ECONNREFUSED as i64), "{v}");
    Ok(())
}

#[test]
fn ebpf_debug_log_reaches_the_daemon_log_only_when_enabled() -> Result<()> {
    let quiet = Setup::new("")?;
    let v = quiet.daemon.probe_in_job(&["connect", &quiet.v4(7000)])?;
    assert_eq!(v["ok"], true);
    let s = Setup::new("ebpf_debug_log = true")?;
    let v = s.daemon.probe_in_job(&["connect", &s.v4(7000)])?;
    assert_eq!(v["ok"], true);
    let expected = format!("redirect pid={}", v["pid"]);
    assert!(
        wait_until(Duration::from_secs(5), || s
            .daemon
            .log()
            .contains(&expected)),
        "{}",
        s.daemon.log()
    );
    assert!(
        !quiet.daemon.log().contains("redirect pid="),
        "{}",
        quiet.daemon.log()
    );
    Ok(())
}
