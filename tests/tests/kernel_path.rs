//! The kernel path (`path = "kernel"`, the default for `tcp` targets) end to end: the connect
//! programs decide from the job's grants, let the connection go straight to the destination, and
//! record it through the ring buffer; each test is an attempt to get a connection through
//! unrecorded or ungranted.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result};
use gateway_e2e::{
    Daemon, DaemonConfig, EchoServer, Netns, TempDir, TestCgroup, free_port, gateway_bin,
    probe_bin, unique_id, wait_until,
};
use serde_json::Value;

/// An echo server in a namespace (IPv4 ports 7000 and 7001, IPv6 port 7000) and a daemon whose
/// kernel-path targets are port 7000 on both addresses: `echo` open to unauthenticated jobs,
/// `echo6` too, `members-only` (port 7001) to nobody unauthenticated.
struct Setup {
    daemon: Daemon,
    echo: EchoServer,
    ns: Netns,
    _dir: TempDir,
}

impl Setup {
    fn new(server: &str) -> Result<Setup> {
        Setup::with(server, "")
    }

    /// `server` may name the namespace's IPv4 /24 as `{net24}`; `targets` adds to the config.
    fn with(server: &str, targets: &str) -> Result<Setup> {
        let id = unique_id();
        let dir = TempDir::new(&format!("k{id}"));
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
path = "kernel"
address = "{v4}:7000"

[[targets]]
name = "echo6"
protocol = "tcp"
path = "kernel"
address = "[{v6}]:7000"

[[targets]]
name = "members-only"
protocol = "tcp"
path = "kernel"
address = "{v4}:7001"

[[rules]]
name = "jobs-may-echo"
action = "allow"
targets = ["echo", "echo6"]
unauthenticated = true
"#,
            v4 = ns.remote_ip,
            v6 = ns.remote_ip6,
        ) + targets;
        let [a, b, c, _] = ns.remote_ip.octets();
        let daemon = Daemon::start(DaemonConfig {
            server: server.replace("{net24}", &format!("{a}.{b}.{c}.0/24")),
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

    fn sessions_to(&self, destination: &str) -> Result<Vec<Value>> {
        Ok(self
            .daemon
            .sessions()?
            .into_iter()
            .filter(|s| s["destination"] == destination)
            .collect())
    }

    /// A cgroup of the test's own, attached as a job; returns it and the job's id.
    fn attached_job(&self, name: &str) -> Result<(TestCgroup, String)> {
        let cg = TestCgroup::new(name)?;
        let job =
            self.daemon
                .cli_json(&["attach", "--cgroup", cg.path.to_str().unwrap(), "--json"])?;
        Ok((cg, job["id"].as_str().unwrap_or_default().to_string()))
    }
}

fn errno(v: &Value) -> Option<i64> {
    v["errno"].as_i64()
}

/// How many outcomes of a probe tally had `errno` (0: success).
fn tallied(v: &Value, errno: i32) -> u64 {
    v["errnos"][errno.to_string()].as_u64().unwrap_or(0)
}

#[test]
fn a_kernel_path_connection_goes_straight_to_the_target_and_is_recorded_like_a_proxied_one()
-> Result<()> {
    let s = Setup::new("")?;
    let dst = s.v4(7000);
    // The probe keeps its process and connection until its stdin closes: the daemon describes
    // the process from /proc, as it does a proxied session's, only while it lives.
    let mut job = Command::new(gateway_bin())
        .arg("--control-socket")
        .arg(&s.daemon.control_socket)
        .args(["run", "--"])
        .arg(probe_bin())
        .args(["connect", &dst, "through", "hold"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(job.stdout.take().context("stdout")?).read_line(&mut line)?;
    let v: Value = serde_json::from_str(line.trim()).with_context(|| line.clone())?;
    assert_eq!(v["ok"], true, "{v}");
    let described = wait_until(Duration::from_secs(10), || {
        s.sessions_to(&dst).is_ok_and(|l| l.len() == 1)
    });
    assert!(described, "{:?}", s.daemon.sessions()?);
    let shown = s.daemon.show_session(&s.sessions_to(&dst)?[0]["id"])?;
    drop(job.stdin.take());
    job.wait()?;
    // No gateway in the path: the job's socket is connected to the destination itself.
    assert_eq!(v["peer"], dst.as_str(), "{v}");
    let local = v["local"].as_str().unwrap_or_default();
    assert!(local.starts_with(&format!("{}:", s.ns.host_ip)), "{v}");
    let greeting = v["greeting"].as_str().unwrap_or_default();
    assert_eq!(greeting, format!("hello {local}"), "{v}");

    // Recorded with what a proxied session has, and its bytes once it closed.
    let done = wait_until(Duration::from_secs(10), || {
        s.sessions_to(&dst)
            .is_ok_and(|l| l.len() == 1 && l[0]["ended_at"].is_string())
    });
    let sessions = s.sessions_to(&dst)?;
    assert!(done, "{sessions:?}");
    let session = &sessions[0];
    assert_eq!(session["path"], "kernel", "{session}");
    assert_eq!(session["target"], "echo", "{session}");
    assert_eq!(session["decision"], "allow", "{session}");
    assert_eq!(session["rule"], "jobs-may-echo", "{session}");
    assert_eq!(session["identity"], "unauthenticated", "{session}");
    assert_eq!(session["pid"], v["pid"], "{session}");
    assert!(session["job_id"].is_string(), "{session}");
    // "through" went up; the greeting line and the echo came down.
    assert_eq!(session["bytes_up"], 7, "{session}");
    assert_eq!(session["bytes_down"], greeting.len() + 1 + 7, "{session}");
    let process = &shown["process"];
    assert_eq!(process["verified"], true, "{shown}");
    assert!(
        process["exe"]
            .as_str()
            .is_some_and(|e| e.ends_with("e2e-probe")),
        "{shown}"
    );
    // `sessions list` shows the path.
    let out = s.daemon.cli(&["sessions", "list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.contains(&dst) && l.contains(" kernel ")),
        "{text}"
    );
    Ok(())
}

#[test]
fn a_job_without_a_grant_is_refused_in_the_kernel_and_the_refusal_says_why() -> Result<()> {
    // Audit mode too: the target's rules are policy, not the audit of non-targets.
    let s = Setup::new("mode = \"audit\"")?;
    let dst = s.v4(7001);
    let accepted = s.echo.accepted().len();
    let v = s.daemon.probe_in_job(&["connect", &dst])?;
    assert_eq!(errno(&v), Some(libc::EPERM as i64), "{v}");
    assert_eq!(
        s.echo.accepted().len(),
        accepted,
        "nothing reached the host"
    );
    let recorded = wait_until(Duration::from_secs(10), || {
        s.sessions_to(&dst).is_ok_and(|l| !l.is_empty())
    });
    let sessions = s.sessions_to(&dst)?;
    assert!(recorded, "{sessions:?}");
    let session = &sessions[0];
    assert_eq!(
        (&session["path"], &session["decision"], &session["target"]),
        (
            &Value::from("kernel"),
            &Value::from("deny"),
            &Value::from("members-only")
        ),
        "{session}"
    );
    let shown = s.daemon.show_session(&session["id"])?;
    assert!(
        shown["reason"]
            .as_str()
            .is_some_and(|r| r.contains("no rule allows")),
        "{shown}"
    );
    Ok(())
}

#[test]
fn ipv6_and_ipv4_mapped_connects_take_the_kernel_path_and_are_recorded() -> Result<()> {
    let s = Setup::new("")?;
    let v6 = format!("[{}]:7000", s.ns.remote_ip6);
    let v = s.daemon.probe_in_job(&["connect", &v6])?;
    assert_eq!(v["ok"], true, "{v}");
    // The IPv4 target through an IPv6 socket: the same grant, the same record.
    let mapped = format!("[::ffff:{}]:7000", s.ns.remote_ip);
    let m = s.daemon.probe_in_job(&["connect", &mapped])?;
    assert_eq!(m["ok"], true, "{m}");
    // …and no grant is no way around through a mapped address.
    let refused = s
        .daemon
        .probe_in_job(&["connect", &format!("[::ffff:{}]:7001", s.ns.remote_ip)])?;
    assert_eq!(errno(&refused), Some(libc::EPERM as i64), "{refused}");
    let recorded = wait_until(Duration::from_secs(10), || {
        let v6_done = s
            .sessions_to(&v6)
            .is_ok_and(|l| l.len() == 1 && l[0]["ended_at"].is_string());
        let v4 = s.sessions_to(&s.v4(7000)).unwrap_or_default();
        let v4_done = v4.len() == 1 && v4[0]["ended_at"].is_string();
        v6_done && v4_done
    });
    assert!(recorded, "{:?}", s.daemon.sessions()?);
    let v4 = &s.sessions_to(&s.v4(7000))?[0];
    assert_eq!(
        (&v4["target"], &v4["path"]),
        (&Value::from("echo"), &Value::from("kernel"))
    );
    assert_eq!(v4["pid"], m["pid"], "{v4}");
    let v6s = &s.sessions_to(&v6)?[0];
    assert_eq!(v6s["target"], "echo6", "{v6s}");
    assert!(v6s["bytes_down"].as_u64().unwrap_or(0) > 0, "{v6s}");
    Ok(())
}

#[test]
fn with_no_daemon_reading_connects_are_refused_and_none_goes_unrecorded() -> Result<()> {
    let mut s = Setup::new("")?;
    let (job, id) = s.attached_job("kdown")?;
    let dst = s.v4(7000);
    assert_eq!(job.probe(&["connect", &dst])?["ok"], true);

    // A daemon that stops closes the kernel path at once.
    s.daemon.terminate();
    let v = job.probe(&["connect", &dst])?;
    assert_eq!(
        errno(&v),
        Some(libc::EPERM as i64),
        "{v}\n{}",
        s.daemon.log()
    );
    s.daemon.start_again()?;
    assert_eq!(job.probe(&["connect", &dst])?["ok"], true);

    // One that is killed leaves it open for at most its lease (2 s): whatever goes through until
    // then waits in the pinned ring buffer, and the next daemon records it.
    s.daemon.kill9();
    let mut through = 0;
    let refused = wait_until(Duration::from_secs(15), || {
        match job.probe(&["connect", &dst]) {
            Ok(v) if v["ok"] == true => {
                through += 1;
                false
            }
            Ok(v) => errno(&v) == Some(libc::EPERM as i64),
            Err(_) => false,
        }
    });
    assert!(
        refused,
        "a kernel-path connect still goes through with no daemon"
    );
    s.daemon.start_again()?;
    // Two before, `through` during, one after the refusal… plus this one.
    assert_eq!(job.probe(&["connect", &dst])?["ok"], true);
    let expected = 2 + through + 1;
    let recorded = wait_until(Duration::from_secs(15), || {
        s.sessions_to(&dst).is_ok_and(|l| {
            l.iter()
                .filter(|x| x["decision"] == "allow" && x["job_id"] == id.as_str())
                .count()
                == expected
        })
    });
    assert!(recorded, "expected {expected}: {:?}", s.sessions_to(&dst)?);
    // Their ends too: the ring buffer kept the closes for the next daemon.
    let ended = wait_until(Duration::from_secs(10), || {
        s.sessions_to(&dst).is_ok_and(|l| {
            l.iter()
                .filter(|x| x["decision"] == "allow")
                .all(|x| x["ended_at"].is_string() && x["bytes_down"] != 0)
        })
    });
    assert!(ended, "{:?}", s.sessions_to(&dst)?);
    // The refusals while nobody read are on record too.
    let why = wait_until(Duration::from_secs(10), || {
        s.sessions_to(&dst)
            .is_ok_and(|l| l.iter().any(|x| x["decision"] == "deny"))
    });
    assert!(why, "{:?}", s.sessions_to(&dst)?);
    Ok(())
}

#[test]
fn a_daemon_killed_in_the_middle_of_a_burst_leaves_every_connection_that_went_through_on_record()
-> Result<()> {
    // Reading a record frees its room in the ring buffer, and storing it (the process looked up
    // in /proc, the journal written) comes after: a daemon killed in between must not take the
    // records it read with it. A burst piled up while the daemon was stopped keeps the storing
    // behind the reading, and the kill lands in between: every connection that went through is
    // recorded by the next daemon, once, opened and closed.
    let mut s = Setup::new("max_pending_connections_per_job = 4096")?;
    let (job, id) = s.attached_job("kburst")?;
    let dst = s.v4(7000);
    let allowed = |l: &Vec<Value>| {
        l.iter()
            .filter(|x| x["decision"] == "allow" && x["job_id"] == id.as_str())
            .count() as u64
    };
    let mut through = 0;
    // Where the kill lands depends on the machine: a few rounds, killed sooner or later after
    // the daemon runs again.
    for after in [1, 4, 12] {
        // The records pile up in the ring buffer while the daemon is stopped (inside its
        // lease)…
        let flood = {
            let _frozen = s.daemon.freeze();
            job.probe(&["flood-connect", &dst, "1500", "greet"])?
        };
        // …and it is killed a moment after it runs again: after its reader took them, before
        // its storing task is through them.
        std::thread::sleep(Duration::from_millis(after));
        s.daemon.kill9();
        let this_round = tallied(&flood, 0);
        assert!(this_round > 0, "{flood}");
        assert_eq!(
            this_round + tallied(&flood, libc::EPERM),
            1500,
            "every connect either went through or was refused: {flood}"
        );
        through += this_round;
        s.daemon.start_again()?;
        let recorded = wait_until(Duration::from_secs(30), || {
            s.sessions_to(&dst).is_ok_and(|l| allowed(&l) >= through)
        });
        let sessions = s.sessions_to(&dst)?;
        assert!(
            recorded,
            "killed {after} ms after it ran again: {through} went through, {} recorded",
            allowed(&sessions)
        );
        assert_eq!(allowed(&sessions), through, "each recorded once");
    }
    let ended = wait_until(Duration::from_secs(15), || {
        s.sessions_to(&dst).is_ok_and(|l| {
            l.iter()
                .filter(|x| x["decision"] == "allow")
                .all(|x| x["ended_at"].is_string())
        })
    });
    assert!(ended, "every connection's end is on record too");
    Ok(())
}

#[test]
fn a_flood_while_the_reader_is_stopped_is_refused_rather_than_left_unrecorded() -> Result<()> {
    // The daemon stopped (its reader with it): a job opening connections as fast as it can gets
    // at most its budget of unread records through, every one of them recorded once the reader
    // runs again; the rest are refused. Another job's connects are not crowded out by it.
    let s = Setup::new("max_pending_connections_per_job = 8")?;
    let (flooder, flooder_id) = s.attached_job("kflood")?;
    let dst = s.v4(7000);
    let accepted_before = s.echo.accepted().len();
    let flood = {
        let _frozen = s.daemon.freeze();
        flooder.probe(&["flood-connect", &dst, "200", "greet"])?
    };
    let through = tallied(&flood, 0);
    let refused = tallied(&flood, libc::EPERM);
    // Connect and close are both records: at most 8 unread.
    assert!(through <= 8, "{flood}");
    assert!(through > 0, "the first connects go through: {flood}");
    assert_eq!(through + refused, 200, "{flood}");
    let recorded = wait_until(Duration::from_secs(15), || {
        s.sessions_to(&dst).is_ok_and(|l| {
            l.iter()
                .filter(|x| x["decision"] == "allow" && x["job_id"] == flooder_id.as_str())
                .count() as u64
                == through
        })
    });
    assert!(recorded, "{through} through: {:?}", s.sessions_to(&dst)?);
    // Exactly those reached the host.
    assert!(
        wait_until(Duration::from_secs(5), || {
            s.echo.accepted().len() - accepted_before == through as usize
        }),
        "{} accepted, {through} recorded",
        s.echo.accepted().len() - accepted_before
    );
    // The reader runs again: so does the job.
    let (other, _) = s.attached_job("kother")?;
    assert_eq!(other.probe(&["connect", &dst])?["ok"], true);
    assert_eq!(flooder.probe(&["connect", &dst])?["ok"], true);
    Ok(())
}

#[test]
fn a_full_ring_buffer_refuses_connects_rather_than_letting_them_go_unrecorded() -> Result<()> {
    // The reader stopped (the daemon frozen, its lease long enough that the lease is not what
    // refuses), and a job's refusals fill the ring buffer (1 MiB of 128-byte records: 8192; a
    // budget of a million records a second lets every one in). From then on a granted connect
    // could not be recorded: it is refused, and nothing of it reaches the host.
    let s = Setup::new("kernel_path_lease = \"10m\"\nrecords_per_second_per_job = 1000000")?;
    let (job, _) = s.attached_job("kfull")?;
    let dst = s.v4(7000);
    let accepted = s.echo.accepted().len();
    let frozen = s.daemon.freeze();
    // With room left the reader being stopped refuses nothing.
    let first = job.probe(&["connect", &dst])?;
    assert_eq!(first["ok"], true, "{first}");
    let flood = job.probe(&["flood-connect", &s.v4(7001), "9000", "close"])?;
    assert_eq!(tallied(&flood, libc::EPERM), 9000, "{flood}");
    let over = job.probe(&["connect", &dst])?;
    assert_eq!(errno(&over), Some(libc::EPERM as i64), "{over}");
    drop(frozen);
    assert!(
        wait_until(Duration::from_secs(5), || s.echo.accepted().len()
            == accepted + 1),
        "{} accepted: only the first connect may have reached the host",
        s.echo.accepted().len() - accepted
    );
    // Read again: room again, and the connect that went through is on record.
    let again = wait_until(Duration::from_secs(20), || {
        job.probe(&["connect", &dst]).is_ok_and(|v| v["ok"] == true)
    });
    assert!(again, "still refused after the reader ran again");
    let recorded = wait_until(Duration::from_secs(20), || {
        s.sessions_to(&dst).is_ok_and(|l| {
            l.iter()
                .filter(|x| x["decision"] == "allow" && x["pid"] == first["pid"])
                .count()
                == 1
        })
    });
    assert!(recorded, "{:?}", s.sessions_to(&dst)?);
    Ok(())
}

#[test]
fn a_job_at_its_connection_limit_is_refused_until_it_closes_one() -> Result<()> {
    let s = Setup::new("max_connections_per_job = 3")?;
    let (job, _) = s.attached_job("klimit")?;
    let dst = s.v4(7000);
    let mut holder = Command::new(probe_bin())
        .arg("--cgroup")
        .arg(&job.path)
        .args(["flood-connect", &dst, "3", "hold"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.take().expect("stdout")),
        &mut line,
    )?;
    let held: Value = serde_json::from_str(line.trim())?;
    // Non-blocking connects: under way (EINPROGRESS) or done.
    assert_eq!(
        tallied(&held, 0) + tallied(&held, libc::EINPROGRESS),
        3,
        "{held}"
    );
    let over = job.probe(&["connect", &dst])?;
    assert_eq!(errno(&over), Some(libc::EPERM as i64), "{over}");
    // Another job is not affected.
    let (other, _) = s.attached_job("klimit2")?;
    assert_eq!(other.probe(&["connect", &dst])?["ok"], true);
    // Closing them gives the job its room back.
    holder.stdin.take().expect("stdin").write_all(b"done\n")?;
    drop(holder.stdin.take());
    let _ = holder.wait();
    let again = wait_until(Duration::from_secs(10), || {
        job.probe(&["connect", &dst]).is_ok_and(|v| v["ok"] == true)
    });
    assert!(again, "the job stays refused after closing its connections");
    let shown = wait_until(Duration::from_secs(10), || {
        s.sessions_to(&dst).is_ok_and(|l| {
            l.iter().any(|x| {
                x["decision"] == "deny"
                    && s.daemon.show_session(&x["id"]).is_ok_and(|d| {
                        d["reason"]
                            .as_str()
                            .is_some_and(|r| r.contains("server.max_connections_per_job"))
                    })
            })
        })
    });
    assert!(shown, "{:?}", s.sessions_to(&dst)?);
    Ok(())
}

#[test]
fn a_job_ended_and_bound_again_keeps_no_grant_of_its_old_binding() -> Result<()> {
    // The runner detaches a cgroup and attaches it again as another job: the grants belong to the
    // job, so the new one has exactly what its own binding gives.
    let s = Setup::new("")?;
    let (job, first) = s.attached_job("krebind")?;
    let dst = s.v4(7000);
    assert_eq!(job.probe(&["connect", &dst])?["ok"], true);
    let out = s
        .daemon
        .cli(&["detach", "--cgroup", job.path.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let again = s
        .daemon
        .cli_json(&["attach", "--cgroup", job.path.to_str().unwrap(), "--json"])?;
    let second = again["id"].as_str().unwrap_or_default().to_string();
    assert_ne!(first, second);
    assert_eq!(job.probe(&["connect", &dst])?["ok"], true);
    let refused = job.probe(&["connect", &s.v4(7001)])?;
    assert_eq!(errno(&refused), Some(libc::EPERM as i64), "{refused}");
    let recorded = wait_until(Duration::from_secs(10), || {
        s.sessions_to(&dst).is_ok_and(|l| {
            l.iter().filter(|x| x["job_id"] == first.as_str()).count() == 1
                && l.iter().filter(|x| x["job_id"] == second.as_str()).count() == 1
        })
    });
    assert!(recorded, "{:?}", s.sessions_to(&dst)?);
    Ok(())
}

#[test]
fn a_host_name_target_takes_the_kernel_path_on_every_address_it_resolves_to() -> Result<()> {
    // `localhost` is what every test host resolves without a resolver: the gateway resolves it
    // the same way (the system's), so each address the test sees is one the gateway granted.
    let port = free_port();
    let addrs: Vec<std::net::SocketAddr> =
        std::net::ToSocketAddrs::to_socket_addrs(&("localhost", port))?.collect();
    anyhow::ensure!(!addrs.is_empty(), "localhost resolves to nothing here");
    let s = Setup::with(
        "",
        &format!(
            r#"
[[targets]]
name = "by-name"
protocol = "tcp"
path = "kernel"
address = "localhost:{port}"

[[rules]]
name = "jobs-may-use-the-name"
action = "allow"
targets = ["by-name"]
unauthenticated = true
"#
        ),
    )?;
    let dir = TempDir::new(&format!("kn{}", unique_id()));
    let listening: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    let _local_echo = EchoServer::start_here(dir.path(), &listening)?;
    for dst in &listening {
        let v = s.daemon.probe_in_job(&["connect", dst, "through"])?;
        assert_eq!(v["ok"], true, "{dst}: {v}");
        assert_eq!(
            v["peer"],
            dst.as_str(),
            "straight to {dst}, no gateway between: {v}"
        );
    }
    // The same port on a loopback address the name does not resolve to is not the target.
    let other = format!("127.0.0.2:{port}");
    let v = s.daemon.probe_in_job(&["connect", &other])?;
    assert_eq!(
        errno(&v),
        Some(libc::EPERM as i64),
        "{other} is not a target: {v}"
    );
    let recorded = wait_until(Duration::from_secs(10), || {
        listening.iter().all(|dst| {
            s.sessions_to(dst)
                .is_ok_and(|l| l.len() == 1 && l[0]["ended_at"].is_string())
        })
    });
    assert!(recorded, "{:?}", s.daemon.sessions()?);
    for dst in &listening {
        let session = &s.sessions_to(dst)?[0];
        assert_eq!(
            (&session["target"], &session["path"], &session["rule"]),
            (
                &Value::from("by-name"),
                &Value::from("kernel"),
                &Value::from("jobs-may-use-the-name")
            ),
            "{session}"
        );
    }
    Ok(())
}

#[test]
fn allow_direct_never_opens_a_kernel_path_target_it_contains() -> Result<()> {
    // The operator lets the whole /24 on port 7001 go direct, and names one address of it a
    // kernel-path target no rule grants: the more specific target decides, as the proxy path does.
    let s = Setup::new("allow_direct = [\"{net24}:7001\"]")?;
    let target = s.v4(7001);
    let accepted = s.echo.accepted().len();
    let v = s.daemon.probe_in_job(&["connect", &target])?;
    assert_eq!(errno(&v), Some(libc::EPERM as i64), "{v}");
    assert_eq!(
        s.echo.accepted().len(),
        accepted,
        "nothing reached the target"
    );
    // Elsewhere in the /24 the job goes direct: the connect reaches the host side of the link,
    // where nothing listens (refused by that host, not by the gateway), and nothing is recorded.
    let direct = format!("{}:7001", s.ns.host_ip);
    let d = s.daemon.probe_in_job(&["connect", &direct])?;
    assert_eq!(errno(&d), Some(libc::ECONNREFUSED as i64), "{d}");
    let denied = wait_until(Duration::from_secs(10), || {
        s.sessions_to(&target).is_ok_and(|l| !l.is_empty())
    });
    assert!(denied, "{:?}", s.daemon.sessions()?);
    assert_eq!(s.sessions_to(&target)?[0]["decision"], "deny");
    assert!(
        s.sessions_to(&direct)?.is_empty(),
        "{:?}",
        s.daemon.sessions()?
    );
    Ok(())
}
