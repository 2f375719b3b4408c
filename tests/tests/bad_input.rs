//! Bad input gets a clear error and changes nothing: broken configs, missing cgroups, a second
//! daemon, unprivileged callers, malformed control requests.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    process::Command,
};

use anyhow::Result;
use gateway_e2e::{
    Daemon, DaemonConfig, TempDir, TestCgroup, gateway_bin, require_root, unique_id,
};

const BROKEN: &str = r#"[server]
mode = "paranoid"
listen = ["0.0.0.0:15001"]

[[targets]]
name = "db"
protocol = "tcp"
address = "10.0.0.5"

[[targets]]
name = "db"
protocol = "tcp"
address = "10.0.0.0/8:*"
"#;

#[test]
fn check_config_names_file_line_and_key_for_each_error() -> Result<()> {
    let dir = TempDir::new(&format!("c{}", unique_id()));
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, BROKEN)?;
    let out = Command::new(gateway_bin())
        .arg("check-config")
        .arg(&path)
        .output()?;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    // A syntax/type error stops at the first problem, with its location.
    assert!(
        stderr.contains(&format!("{}:2:", path.display())),
        "{stderr}"
    );
    assert!(stderr.contains("paranoid"), "{stderr}");

    // With the enum fixed, the semantic errors are all reported at once.
    std::fs::write(&path, BROKEN.replace("paranoid", "enforce"))?;
    let out = Command::new(gateway_bin())
        .arg("check-config")
        .arg(&path)
        .output()?;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let p = path.display();
    for expected in [
        format!("{p}:3:11: server.listen[0]: 0.0.0.0:15001 is not a loopback address"),
        format!("{p}:8:11: targets[0].address:"),
        format!("{p}:11:8: targets[1].name: duplicate target name \"db\""),
        format!("{p}:13:11: targets[1].address: a port is required"),
        format!("{p}: 4 errors"),
    ] {
        assert!(
            stderr.contains(&expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }

    let unknown = dir.path().join("unknown.toml");
    std::fs::write(&unknown, "[server]\nlisten_port = 1\n")?;
    let out = Command::new(gateway_bin())
        .arg("check-config")
        .arg(&unknown)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(":2:1:") && stderr.contains("listen_port"),
        "{stderr}"
    );

    let missing = Command::new(gateway_bin())
        .arg("check-config")
        .arg(dir.path().join("nope.toml"))
        .output()?;
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("nope.toml"));
    Ok(())
}

#[test]
fn per_job_limits_out_of_range_are_named_with_their_key() -> Result<()> {
    let dir = TempDir::new(&format!("l{}", unique_id()));
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        "[server]\nmax_pending_connections_per_job = 0\nrecords_per_second_per_job = -5\n",
    )?;
    let out = Command::new(gateway_bin())
        .arg("check-config")
        .arg(&path)
        .output()?;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let p = path.display();
    for expected in [
        format!("{p}:2:35: server.max_pending_connections_per_job: must be from 1 to 65536"),
        format!("{p}:3:30: server.records_per_second_per_job: must be from 1 to 1000000"),
    ] {
        assert!(
            stderr.contains(&expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
    // More connects waiting than the kernel's table holds.
    std::fs::write(&path, "[server]\nmax_pending_connections_per_job = 65537\n")?;
    let out = Command::new(gateway_bin())
        .arg("check-config")
        .arg(&path)
        .output()?;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    Ok(())
}

#[test]
fn serve_refuses_an_invalid_config_and_leaves_nothing_behind() -> Result<()> {
    require_root();
    let id = unique_id();
    let dir = TempDir::new(&format!("v{id}"));
    let path = dir.path().join("gateway.toml");
    let pins = format!("/sys/fs/bpf/gwe-{id}");
    let socket = dir.path().join("control.sock");
    std::fs::write(
        &path,
        format!(
            "[server]\nbpf_pin_dir = \"{pins}\"\ncontrol_socket = \"{}\"\nstate_dir = \"{}/state\"\n\n[[targets]]\nname = \"x\"\nprotocol = \"tcp\"\naddress = \"not an address\"\n",
            socket.display(),
            dir.path().display()
        ),
    )?;
    let out = Command::new(gateway_bin())
        .arg("--config")
        .arg(&path)
        .arg("serve")
        .output()?;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("targets[0].address"));
    assert!(!std::path::Path::new(&pins).exists(), "no pinned objects");
    assert!(!socket.exists(), "no control socket");
    assert!(!dir.path().join("state").exists(), "no state directory");
    Ok(())
}

#[test]
fn attach_errors_are_one_clear_line_and_change_nothing() -> Result<()> {
    let daemon = Daemon::start(DaemonConfig::default())?;
    let out = daemon.cli(&["attach", "--cgroup", "/no/such/cgroup"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("does not exist"), "{stderr}");

    // Attaching the gateway's own cgroup (or an ancestor) would loop its upstream connections.
    let out = daemon.cli(&["attach", "--cgroup", "/"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("the gateway itself runs"),
        "{out:?}"
    );

    // A non-cgroup directory.
    let out = daemon.cli(&["attach", "--cgroup", "/tmp"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");

    // Twice the same cgroup.
    let cg = TestCgroup::new("twice")?;
    assert!(
        daemon
            .cli(&["attach", "--cgroup", cg.path.to_str().unwrap()])
            .status
            .success()
    );
    let out = daemon.cli(&["attach", "--cgroup", cg.path.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already attached"),
        "{out:?}"
    );

    let status = daemon.cli_json(&["status", "--json"])?;
    assert_eq!(status["jobs"].as_array().unwrap().len(), 1, "{status}");
    assert!(
        daemon
            .cli(&["detach", "--cgroup", cg.path.to_str().unwrap()])
            .status
            .success()
    );
    let out = daemon.cli(&["detach", "--cgroup", cg.path.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not attached"),
        "{out:?}"
    );
    Ok(())
}

#[test]
fn a_second_daemon_on_the_same_pinned_objects_is_refused() -> Result<()> {
    let daemon = Daemon::start(DaemonConfig::default())?;
    let dir = TempDir::new(&format!("2{}", unique_id()));
    let path = dir.path().join("second.toml");
    let text = std::fs::read_to_string(&daemon.config_path)?
        .replace(
            &daemon.control_socket.display().to_string(),
            &dir.path().join("c.sock").display().to_string(),
        )
        .replace(
            &format!(":{}\"", daemon.port),
            &format!(":{}\"", gateway_e2e::free_port()),
        );
    std::fs::write(&path, text)?;
    let out = Command::new(gateway_bin())
        .arg("--config")
        .arg(&path)
        .arg("serve")
        .output()?;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("another gateway daemon is running"),
        "{stderr}"
    );
    // The first one is unaffected.
    assert!(daemon.cli(&["status"]).status.success());
    Ok(())
}

#[test]
fn unprivileged_callers_and_malformed_requests_get_clear_errors() -> Result<()> {
    let daemon = Daemon::start(DaemonConfig::default())?;
    let out = Command::new("runuser")
        .args(["-u", "nobody", "--"])
        .arg(gateway_bin())
        .arg("--control-socket")
        .arg(&daemon.control_socket)
        .arg("status")
        .output()?;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("permission denied") || stderr.contains("Permission denied"),
        "{stderr}"
    );

    let out = Command::new("runuser")
        .args(["-u", "nobody", "--"])
        .arg(gateway_bin())
        .arg("serve")
        .output()?;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("must run as root"),
        "{out:?}"
    );

    for garbage in [
        "not json\n",
        "{\"op\":\"format_disk\"}\n",
        "{\"op\":\"show_session\",\"id\":\"x\"}\n",
    ] {
        let mut stream = UnixStream::connect(&daemon.control_socket)?;
        stream.write_all(garbage.as_bytes())?;
        let mut answer = String::new();
        BufReader::new(stream).read_line(&mut answer)?;
        let v: serde_json::Value = serde_json::from_str(&answer)?;
        assert_eq!(v["result"], "error", "{garbage:?} → {v}");
        assert!(
            v["message"].as_str().unwrap().contains("malformed request"),
            "{v}"
        );
    }
    // An oversized request is cut off, not buffered.
    let mut stream = UnixStream::connect(&daemon.control_socket)?;
    let big = vec![b'x'; 2 * 1024 * 1024];
    let _ = stream.write_all(&big);
    let mut answer = String::new();
    let _ = BufReader::new(stream).read_line(&mut answer);
    assert!(answer.contains("larger than"), "{answer}");

    let out = daemon.cli(&["sessions", "show", "999999"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not found"),
        "{out:?}"
    );
    assert!(
        daemon.cli(&["status"]).status.success(),
        "the daemon still serves"
    );
    Ok(())
}

#[test]
fn serve_refuses_a_damaged_client_tls_ca_and_keeps_the_file() -> Result<()> {
    let mut d = Daemon::start(DaemonConfig {
        server: String::new(),
        body:
            "[[targets]]\nname = \"db\"\nprotocol = \"postgres\"\naddress = \"192.0.2.10:5432\"\n"
                .into(),
    })?;
    let cert = d.dir.path().join("state/tls/ca.pem");
    assert!(
        cert.exists(),
        "the CA is created when a postgres target offers TLS"
    );
    d.terminate();
    let damaged = "-----BEGIN CERTIFICATE-----\nZ2FyYmFnZQ==\n-----END CERTIFICATE-----\n";
    std::fs::write(&cert, damaged)?;
    let e = d
        .start_again()
        .expect_err("a damaged CA stops the start")
        .to_string();
    let line = e
        .lines()
        .find(|l| l.contains("ca.pem"))
        .unwrap_or_else(|| panic!("no line naming ca.pem in {e}"));
    assert!(line.contains("client TLS CA"), "{line}");
    assert_eq!(std::fs::read_to_string(&cert)?, damaged, "never replaced");
    Ok(())
}
