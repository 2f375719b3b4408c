//! Host names that follow DNS: a job's DNS goes through the gateway's forwarder, and a host-name
//! target reaches the addresses that job was told, and nothing else.

use std::{path::PathBuf, process::Command, time::Duration};

use anyhow::{Result, ensure};
use gateway_e2e::{
    Daemon, DaemonConfig, EchoServer, Netns, Process, TempDir, dns_bin, free_port, run_ok,
    unique_id, wait_until,
};
use serde_json::Value;

/// A "remote host" with a DNS server (e2e-dns) on its port 53 and an echo server on port 7000
/// of three more addresses; the daemon follows DNS with that server as the only resolver, and
/// its targets are `api.test:7000` and `*.cdn.test:7000`.
struct Setup {
    daemon: Daemon,
    dns: Process,
    echo: EchoServer,
    ns: Netns,
    zone: PathBuf,
    _dir: TempDir,
}

impl Setup {
    fn new() -> Result<Setup> {
        let id = unique_id();
        let dir = TempDir::new(&format!("n{id}"));
        let ns = Netns::new(&id)?;
        for last in [3, 4, 5] {
            run_ok(Command::new("ip").args([
                "-n",
                &ns.name,
                "addr",
                "add",
                &format!("{}/32", Setup::address(&ns, last)),
                "dev",
                "lo",
            ]))?;
        }
        let echo = EchoServer::start(
            &ns,
            dir.path(),
            &[3, 4, 5].map(|l| format!("{}:7000", Setup::address(&ns, l))),
        )?;
        let zone = dir.path().join("zone");
        std::fs::write(
            &zone,
            format!(
                "api.test 30 {},{}\ncdn.test 30 {c}\nimg.cdn.test 30 {c}\n",
                Setup::address(&ns, 3),
                Setup::address(&ns, 4),
                c = Setup::address(&ns, 5),
            ),
        )?;
        let mut cmd = ns.command(dns_bin());
        cmd.arg(format!("{}:53", ns.remote_ip)).arg(&zone);
        let dns = Process::spawn("dns", &mut cmd, dir.path().join("dns.log"))?;
        ensure!(
            wait_until(Duration::from_secs(10), || dns
                .output()
                .contains("listening")),
            "e2e-dns did not start: {}",
            dns.output()
        );
        let daemon = Daemon::start(DaemonConfig {
            server: format!(
                "dns_follow = true\ndns_listen_port = {}\ndns_resolvers = [\"{}\"]\n",
                free_port(),
                ns.remote_ip
            ),
            body: r#"
[[targets]]
name = "api"
protocol = "tcp"
address = "api.test:7000"

[[targets]]
name = "cdn"
protocol = "tcp"
address = "*.cdn.test:7000"

[[rules]]
name = "jobs-may-use-the-api"
action = "allow"
targets = ["api", "cdn"]
unauthenticated = true
"#
            .into(),
        })?;
        Ok(Setup {
            daemon,
            dns,
            echo,
            ns,
            zone,
            _dir: dir,
        })
    }

    /// 10.x.y.`last` of the namespace's subnet.
    fn address(ns: &Netns, last: u8) -> String {
        let o = ns.remote_ip.octets();
        format!("{}.{}.{}.{last}", o[0], o[1], o[2])
    }

    fn resolver(&self) -> String {
        format!("{}:53", self.ns.remote_ip)
    }
}

fn sessions(s: &Setup, protocol: &str) -> Result<Vec<Value>> {
    Ok(s.daemon
        .sessions()?
        .into_iter()
        .filter(|x| x["protocol"] == protocol)
        .collect())
}

#[test]
fn a_host_name_target_reaches_each_address_the_job_was_told_and_nothing_else() -> Result<()> {
    let s = Setup::new()?;
    let (a, b, c) = (
        Setup::address(&s.ns, 3),
        Setup::address(&s.ns, 4),
        Setup::address(&s.ns, 5),
    );
    // One job: asks twice (the answer changes from A to B), connects to each answer, then to A
    // again (still within its TTL) and to C (on the same server, never answered).
    let v = s.daemon.probe_in_job(&[
        "dns-follow",
        &s.resolver(),
        "api.test",
        "7000",
        "2",
        &format!("{a}:7000"),
        &format!("{c}:7000"),
    ])?;
    let rounds = v["rounds"].as_array().expect("rounds");
    for (round, told) in rounds.iter().zip([&a, &b]) {
        assert_eq!(round["ok"], true, "{v}");
        // The answer comes from the resolver the job asked (its resolver library checks).
        assert_eq!(round["from"], s.resolver().as_str(), "{v}");
        assert_eq!(round["addresses"], serde_json::json!([told]), "{v}");
        let connect = &round["connects"][0];
        assert_eq!(connect["ok"], true, "{told} must be reachable: {v}");
        assert_eq!(connect["peer"], format!("{told}:7000"), "{v}");
        assert_eq!(connect["echo"], "told", "{v}");
    }
    // getpeername() of the connected socket says the resolver too.
    assert_eq!(rounds[0]["peer"], s.resolver().as_str(), "{v}");
    assert_eq!(v["others"][0]["ok"], true, "A is still within its TTL: {v}");
    assert_eq!(
        v["others"][1]["errno"],
        libc::EPERM,
        "C was never answered: {v}"
    );
    // The echo server saw the gateway's connections to A and B only (A twice).
    let accepted = s.echo.accepted();
    assert_eq!(accepted.len(), 3, "{accepted:?}");

    // Another job that was never told A: A is in the kernel's set (the first job's), but the
    // gateway refuses it to this job.
    let other = s.daemon.probe_in_job(&["connect", &format!("{a}:7000")])?;
    assert_ne!(other["ok"], true, "{other}");

    let tcp = sessions(&s, "tcp")?;
    let allowed: Vec<&Value> = tcp.iter().filter(|x| x["decision"] == "allow").collect();
    assert_eq!(allowed.len(), 3, "{tcp:?}");
    assert!(allowed.iter().all(|x| x["target"] == "api"), "{tcp:?}");
    let job = allowed[0]["job_id"].clone();
    assert!(
        allowed.iter().all(|x| x["job_id"] == job),
        "attributed to the job that resolved: {tcp:?}"
    );
    let refused = tcp
        .iter()
        .find(|x| {
            x["decision"] == "deny" && x["destination"] == format!("{a}:7000") && x["job_id"] != job
        })
        .unwrap_or_else(|| panic!("the other job's connect to A is not recorded: {tcp:?}"));
    let shown = s.daemon.show_session(&refused["id"])?;
    assert!(
        shown["reason"]
            .as_str()
            .is_some_and(|r| r.contains("not resolved by this job")),
        "{shown}"
    );
    assert!(
        tcp.iter().any(|x| x["decision"] == "deny"
            && x["destination"] == format!("{c}:7000")
            && x["job_id"] == job),
        "{tcp:?}"
    );

    // Each query is recorded for the job: name, type and answers.
    let mut dns = sessions(&s, "dns")?;
    dns.sort_by_key(|x| x["id"].as_i64());
    assert_eq!(dns.len(), 2, "{dns:?}");
    for (query, told) in dns.iter().zip([&a, &b]) {
        assert_eq!(query["job_id"], job, "{query}");
        assert_eq!(query["target"], "api", "{query}");
        let shown = s.daemon.show_session(&query["id"])?;
        let event = shown["events"]
            .as_array()
            .and_then(|e| e.iter().find(|e| e["kind"] == "dns"))
            .cloned()
            .unwrap_or_default();
        let detail = &event["detail"];
        assert_eq!(detail["name"], "api.test", "{shown}");
        assert_eq!(detail["type"], "A", "{shown}");
        assert_eq!(detail["answers"][0]["address"], told.as_str(), "{shown}");
        assert_eq!(detail["followed"][0]["target"], "api", "{shown}");
    }
    Ok(())
}

#[test]
fn a_malformed_dns_query_is_dropped_and_recorded_and_never_reaches_the_resolver() -> Result<()> {
    let s = Setup::new()?;
    std::fs::write(&s.zone, "")?;
    let v = s
        .daemon
        .probe_in_job(&["dns-raw", &s.resolver(), "00ff00ffdeadbeef"])?;
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["answered"], false, "{v}");
    assert!(
        wait_until(Duration::from_secs(5), || sessions(&s, "dns")
            .is_ok_and(|l| l.iter().any(|x| x["decision"] == "deny"))),
        "{:?}",
        sessions(&s, "dns")?
    );
    let dns = sessions(&s, "dns")?;
    let shown = s.daemon.show_session(&dns[0]["id"])?;
    assert!(
        shown["reason"]
            .as_str()
            .is_some_and(|r| r.contains("malformed DNS query")),
        "{shown}"
    );
    assert!(dns[0]["job_id"].is_string(), "{dns:?}");
    assert!(!s.dns.output().contains("malformed"), "{}", s.dns.output());
    Ok(())
}

#[test]
fn a_wildcard_target_follows_the_names_below_it_and_not_the_name_itself() -> Result<()> {
    let s = Setup::new()?;
    let c = Setup::address(&s.ns, 5);
    // cdn.test is not below *.cdn.test: told its address, the job still cannot reach it.
    let v = s
        .daemon
        .probe_in_job(&["dns-follow", &s.resolver(), "cdn.test", "7000", "1"])?;
    assert_eq!(v["rounds"][0]["addresses"], serde_json::json!([c]), "{v}");
    assert_eq!(v["rounds"][0]["connects"][0]["errno"], libc::EPERM, "{v}");
    let v = s
        .daemon
        .probe_in_job(&["dns-follow", &s.resolver(), "img.cdn.test", "7000", "1"])?;
    assert_eq!(v["rounds"][0]["addresses"], serde_json::json!([c]), "{v}");
    assert_eq!(v["rounds"][0]["connects"][0]["ok"], true, "{v}");
    let tcp = sessions(&s, "tcp")?;
    assert!(
        tcp.iter().any(|x| x["decision"] == "allow"
            && x["target"] == "cdn"
            && x["destination"] == format!("{c}:7000")),
        "{tcp:?}"
    );
    Ok(())
}
