//! The systemd integration: the unit and slice pass `systemd-analyze verify`, and the daemon works
//! under exactly the unit's capability bounding set, telling systemd when it is ready and stopping.

use std::{
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, Result};
use gateway_e2e::{
    Daemon, DaemonConfig, EchoServer, Netns, TempDir, gateway_bin, probe_bin, unique_id,
};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn unit_text() -> String {
    std::fs::read_to_string(repo().join("systemd/gateway.service")).unwrap()
}

/// Values of `key=` in the unit (all occurrences, split on whitespace).
fn unit_values(key: &str) -> Vec<String> {
    unit_text()
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .flat_map(|v| v.split_whitespace().map(str::to_string))
        .collect()
}

/// systemd-analyze, installed from Debian (package `systemd`) when missing.
fn systemd_analyze() -> Option<PathBuf> {
    let find = || {
        ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
    };
    if let Some(p) = find() {
        return Some(p);
    }
    let _ = Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends", "systemd"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status();
    find()
}

#[test]
fn unit_and_slice_pass_systemd_analyze_verify() -> Result<()> {
    let Some(analyze) = systemd_analyze() else {
        eprintln!(
            "SKIPPED: systemd-analyze is not installed and `apt-get install systemd` failed; \
             cannot verify systemd/gateway.service"
        );
        return Ok(());
    };
    let dir = TempDir::new(&format!("u{}", unique_id()));
    // The unit names the installed binary; point it at the one under test so that verify also
    // checks ExecStart/ExecStartPre resolve to an executable.
    let unit = unit_text().replace("/usr/local/bin/gateway", gateway_bin().to_str().unwrap());
    std::fs::write(dir.path().join("gateway.service"), unit)?;
    std::fs::copy(
        repo().join("systemd/gateway-jobs.slice"),
        dir.path().join("gateway-jobs.slice"),
    )?;
    let out = Command::new(analyze)
        .arg("verify")
        .arg(dir.path().join("gateway.service"))
        .arg(dir.path().join("gateway-jobs.slice"))
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    // verify exits 0 on keys it ignores; any diagnostic at all is a defect of the unit.
    assert!(out.status.success() && stderr.trim().is_empty(), "{stderr}");
    Ok(())
}

#[test]
fn unit_is_hardened_and_matches_the_example_configuration() {
    let one = |k: &str| unit_values(k).join(" ");
    assert_eq!(one("Type"), "notify");
    assert_eq!(one("Restart"), "on-failure");
    assert_eq!(one("NoNewPrivileges"), "yes");
    assert_eq!(one("ProtectSystem"), "strict");
    assert_eq!(one("PrivateTmp"), "yes");
    assert_eq!(one("StateDirectory"), "gateway");
    assert_eq!(one("RuntimeDirectory"), "gateway");
    let mut caps = unit_values("CapabilityBoundingSet");
    caps.sort();
    assert_eq!(
        caps,
        ["CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON", "CAP_SYS_PTRACE"]
    );
    assert!(unit_values("ReadWritePaths").contains(&"/sys/fs/bpf".to_string()));
    assert!(unit_values("Wants").contains(&"gateway-jobs.slice".to_string()));
    // The installed example puts jobs in the slice's cgroup (systemd maps a-b.slice to a.slice/a-b.slice).
    let example = std::fs::read_to_string(repo().join("examples/gateway.toml")).unwrap();
    assert!(
        example.contains("job_cgroup_parent = \"gateway.slice/gateway-jobs.slice\""),
        "examples/gateway.toml must place jobs in gateway-jobs.slice"
    );
    // Paths the unit allows writing are the ones the example configuration uses.
    assert!(example.contains("state_dir = \"/var/lib/gateway\""));
    assert!(example.contains("control_socket = \"/run/gateway/control.sock\""));
}

/// `setpriv` arguments that give a root process exactly the unit's capability bounding set.
fn setpriv_for_unit() -> Vec<String> {
    let caps: Vec<String> = unit_values("CapabilityBoundingSet")
        .iter()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    vec![
        "setpriv".into(),
        "--bounding-set".into(),
        format!("-all,{}", caps.join(",")),
        "--inh-caps".into(),
        "-all".into(),
        "--".into(),
    ]
}

#[test]
fn daemon_works_with_only_the_units_capabilities_and_notifies_systemd() -> Result<()> {
    let id = unique_id();
    let dir = TempDir::new(&format!("n{id}"));
    let ns = Netns::new(&id)?;
    let _echo = EchoServer::start(&ns, dir.path(), &[format!("{}:7000", ns.remote_ip)])?;
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path)?;
    notify.set_read_timeout(Some(Duration::from_secs(30)))?;
    let wrapper = setpriv_for_unit();
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let mut daemon = Daemon::builder(DaemonConfig {
        server: String::new(),
        body: format!(
            "[[targets]]\nname = \"echo\"\nprotocol = \"tcp\"\naddress = \"{}:7000\"\n\n[[rules]]\nname = \"all\"\naction = \"allow\"\nunauthenticated = true\n",
            ns.remote_ip
        ),
    })
    .env("NOTIFY_SOCKET", notify_path.to_str().unwrap())
    .wrapper(&wrapper)
    .start()?;
    let mut buf = [0u8; 256];
    let n = notify.recv(&mut buf).context("no sd_notify message")?;
    // systemd reads newline-separated assignments; a trailing newline is allowed.
    let message = std::str::from_utf8(&buf[..n])?;
    assert_eq!(message.lines().collect::<Vec<_>>(), ["READY=1"]);

    // The daemon really runs without the other capabilities.
    let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.pid()))?;
    let bounding = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .context("CapBnd")?
        .trim()
        .to_string();
    // CAP_NET_ADMIN 12, CAP_SYS_PTRACE 19, CAP_PERFMON 38, CAP_BPF 39.
    let expected: u64 = (1 << 12) | (1 << 19) | (1 << 38) | (1 << 39);
    assert_eq!(u64::from_str_radix(&bounding, 16)?, expected, "{status}");

    // On a systemd host the slice's cgroup exists before the daemon starts; here the test makes the
    // parent so that the daemon only creates cgroups below it, as it would there.
    std::fs::create_dir_all(daemon.job_parent_path())?;
    // A job is intercepted and served: programs loaded and attached, listener, relay, recording.
    let dst = format!("{}:7000", ns.remote_ip);
    let v = daemon.probe_in_job(&["connect", &dst, "capped"])?;
    assert_eq!(v["ok"], true, "{v}\n{}", daemon.log());
    assert_eq!(v["echo"], "capped", "{v}");
    assert!(
        v["local"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{v}"
    );
    let sessions = daemon.sessions()?;
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    // Attribution reads /proc/PID/exe: needs CAP_SYS_PTRACE for other users' processes.
    let out = Command::new(gateway_bin())
        .arg("--control-socket")
        .arg(&daemon.control_socket)
        .args(["run", "--user", "nobody", "--"])
        .arg(probe_bin())
        .args(["connect", &dst, "nobody"])
        .output()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| String::from_utf8_lossy(&out.stderr).into_owned())?;
    assert_eq!(v["echo"], "nobody", "{v}");
    let last = daemon.sessions()?.pop().unwrap();
    let shown = daemon.show_session(&last["id"])?;
    assert!(
        shown["process"]["exe"]
            .as_str()
            .is_some_and(|e| e.ends_with("/e2e-probe")),
        "{shown}"
    );

    daemon.terminate();
    let n = notify.recv(&mut buf).context("no STOPPING=1")?;
    // sd_notify(3) messages are newline-separated assignments; the sd-notify crate ends each.
    let message = String::from_utf8_lossy(&buf[..n]);
    assert_eq!(message.lines().collect::<Vec<_>>(), ["STOPPING=1"]);
    Ok(())
}
