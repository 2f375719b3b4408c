//! Host names that follow DNS: a job's DNS goes through the gateway's forwarder, and a host-name
//! target reaches the addresses that job was told, and nothing else.

use std::{path::PathBuf, process::Command, time::Duration};

use anyhow::{Context as _, Result, ensure};
use gateway_e2e::{
    Daemon, DaemonConfig, EchoServer, Netns, Process, TempDir, TestCgroup, dns_bin, free_port,
    gateway_bin,
    oidc::{Issuer, Mode},
    probe_bin, run_ok, unique_id, wait_until,
};
use serde_json::Value;

/// The rule most tests run with: every job may connect to both targets.
const JOBS_MAY_USE_THE_API: &str = r#"
[[rules]]
name = "jobs-may-use-the-api"
action = "allow"
targets = ["api", "cdn"]
unauthenticated = true
"#;

/// A "remote host" with a DNS server (e2e-dns) on its port 53 and an echo server on port 7000
/// of three more addresses; the daemon follows DNS with that server as the only resolver, and
/// its targets are `api.test:7000` and `*.cdn.test:7000`.
struct Setup {
    daemon: Daemon,
    dns: Process,
    echo: EchoServer,
    ns: Netns,
    zone: PathBuf,
    /// Where the DNS server listens (ADDR:53).
    resolver: String,
    /// The gateway's DNS forwarder port (`server.dns_listen_port`).
    dns_port: u16,
    _dir: TempDir,
}

impl Setup {
    fn new() -> Result<Setup> {
        Setup::with_resolver_in(None)
    }

    /// `job_ns`: the DNS server listens on 127.0.0.11:53 in that job network namespace (as
    /// Docker's embedded resolver does: an address that means something else on the host)
    /// instead of on the remote host.
    fn with_resolver_in(job_ns: Option<&JobNetns>) -> Result<Setup> {
        Setup::with_config(job_ns, "", JOBS_MAY_USE_THE_API)
    }

    /// `server`: more `[server]` keys (`@C@` stands for the third echo address); `rules`: the
    /// configuration after the targets (rules, and issuers they need).
    fn with_config(job_ns: Option<&JobNetns>, server: &str, rules: &str) -> Result<Setup> {
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
        let (resolver_ip, mut cmd) = match job_ns {
            None => (ns.remote_ip.to_string(), ns.command(dns_bin())),
            Some(j) => ("127.0.0.11".to_string(), j.command(dns_bin())),
        };
        let resolver = format!("{resolver_ip}:53");
        cmd.arg(&resolver).arg(&zone);
        let dns = Process::spawn("dns", &mut cmd, dir.path().join("dns.log"))?;
        ensure!(
            wait_until(Duration::from_secs(10), || dns
                .output()
                .contains("listening")),
            "e2e-dns did not start: {}",
            dns.output()
        );
        let dns_port = free_port();
        let daemon = Daemon::start(DaemonConfig {
            server: format!(
                "dns_follow = true\ndns_listen_port = {}\ndns_resolvers = [\"{}\"]\n{}\n",
                dns_port,
                resolver_ip,
                server.replace("@C@", &Setup::address(&ns, 5)),
            ),
            body: format!(
                r#"
[[targets]]
name = "api"
protocol = "tcp"
address = "api.test:7000"

[[targets]]
name = "cdn"
protocol = "tcp"
address = "*.cdn.test:7000"
{rules}"#
            ),
        })?;
        Ok(Setup {
            daemon,
            dns,
            echo,
            ns,
            zone,
            resolver,
            dns_port,
            _dir: dir,
        })
    }

    /// 10.x.y.`last` of the namespace's subnet.
    fn address(ns: &Netns, last: u8) -> String {
        let o = ns.remote_ip.octets();
        format!("{}.{}.{}.{last}", o[0], o[1], o[2])
    }

    fn resolver(&self) -> String {
        self.resolver.clone()
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
        let detail = dns_detail(&s, query)?;
        assert_eq!(detail["name"], "api.test", "{detail}");
        assert_eq!(detail["type"], "A", "{detail}");
        assert_eq!(detail["answers"][0]["address"], told.as_str(), "{detail}");
        assert_eq!(detail["followed"][0]["target"], "api", "{detail}");
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

/// A name is data the job chose (`123-45-6789.cdn.test`): its record is masked with the
/// detectors of every `[[masking]]` rule (here one of another target), as command lines are;
/// the resolver still gets the question as asked.
#[test]
fn a_name_asked_is_recorded_masked() -> Result<()> {
    let s = Setup::with_config(
        None,
        "",
        &format!(
            r#"{JOBS_MAY_USE_THE_API}
[[targets]]
name = "web"
protocol = "http"
address = "192.0.2.80:80"
[targets.http]
tls = "none"

[[masking]]
name = "pii"
targets = ["web"]
detectors = ["us_ssn"]
"#
        ),
    )?;
    let v = s.daemon.probe_in_job(&[
        "dns-follow",
        &s.resolver(),
        "123-45-6789.cdn.test",
        "7000",
        "1",
    ])?;
    ensure!(v["rounds"][0]["ok"] == true, "{v}");
    ensure!(
        wait_until(Duration::from_secs(5), || sessions(&s, "dns")
            .is_ok_and(|l| !l.is_empty())),
        "no dns session recorded"
    );
    let dns = sessions(&s, "dns")?;
    let detail = dns_detail(&s, &dns[0])?;
    let name = detail["name"].as_str().unwrap_or_default();
    ensure!(
        name.ends_with(".cdn.test") && !name.contains("123-45-6789"),
        "{detail}"
    );
    let all = s.daemon.show_session(&dns[0]["id"])?.to_string();
    ensure!(!all.contains("123-45-6789"), "{all}");
    ensure!(
        s.dns.output().contains("123-45-6789.cdn.test"),
        "the resolver was asked the name as the job asked it: {}",
        s.dns.output()
    );
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

/// The `dns` event of a recorded query.
fn dns_detail(s: &Setup, session: &Value) -> Result<Value> {
    let shown = s.daemon.show_session(&session["id"])?;
    Ok(shown["events"]
        .as_array()
        .and_then(|e| e.iter().find(|e| e["kind"] == "dns"))
        .map(|e| e["detail"].clone())
        .unwrap_or_default())
}

/// DNS over TCP (a resolver library retrying a truncated answer, `dig +tcp`, `use-vc`) goes
/// through the gateway's forwarder too: the answer is followed for the job exactly as over
/// UDP, the resolver is asked over TCP, and an address never answered is still refused.
#[test]
fn a_host_name_target_follows_an_answer_the_job_got_over_tcp() -> Result<()> {
    let s = Setup::new()?;
    let (a, c) = (Setup::address(&s.ns, 3), Setup::address(&s.ns, 5));
    let v = s.daemon.probe_in_job(&[
        "dns-follow-tcp",
        &s.resolver(),
        "api.test",
        "7000",
        "1",
        &format!("{c}:7000"),
    ])?;
    let round = &v["rounds"][0];
    assert_eq!(round["ok"], true, "{v}\n{}", s.daemon.log());
    assert_eq!(round["addresses"], serde_json::json!([a]), "{v}");
    // getpeername() of the job's TCP socket says the resolver it connected to.
    assert_eq!(round["peer"], s.resolver().as_str(), "{v}");
    assert_eq!(round["connects"][0]["ok"], true, "{v}");
    assert_eq!(round["connects"][0]["echo"], "told", "{v}");
    assert_eq!(
        v["others"][0]["errno"],
        libc::EPERM,
        "C was never answered: {v}"
    );
    assert!(
        s.dns.output().contains("query api.test A tcp"),
        "the resolver is asked over TCP: {}",
        s.dns.output()
    );
    let dns = sessions(&s, "dns")?;
    assert_eq!(dns.len(), 1, "{dns:?}");
    assert!(dns[0]["job_id"].is_string(), "{dns:?}");
    assert_eq!(dns[0]["target"], "api", "{dns:?}");
    let detail = dns_detail(&s, &dns[0])?;
    assert_eq!(detail["name"], "api.test", "{detail}");
    assert_eq!(detail["transport"], "tcp", "{detail}");
    assert_eq!(detail["answers"][0]["address"], a.as_str(), "{detail}");
    assert_eq!(detail["followed"][0]["target"], "api", "{detail}");
    Ok(())
}

/// Over TCP as over UDP: a message that is no DNS query, or longer than a query may be, is
/// dropped and recorded, the connection closed, and nothing reaches the resolver.
#[test]
fn a_malformed_or_oversized_dns_message_over_tcp_is_dropped_and_recorded() -> Result<()> {
    let s = Setup::new()?;
    // A length of 8, then 8 bytes that are no DNS message.
    let v = s
        .daemon
        .probe_in_job(&["dns-raw-tcp", &s.resolver(), "000800ff00ffdeadbeef"])?;
    assert_eq!(v["ok"], true, "{v}\n{}", s.daemon.log());
    assert_eq!(v["answered"], false, "{v}");
    // A length of 65535: refused before it is read.
    let v = s
        .daemon
        .probe_in_job(&["dns-raw-tcp", &s.resolver(), "ffff0001"])?;
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["answered"], false, "{v}");
    assert!(
        wait_until(Duration::from_secs(5), || sessions(&s, "dns").is_ok_and(
            |l| l.iter().filter(|x| x["decision"] == "deny").count() == 2
        )),
        "{:?}",
        sessions(&s, "dns")?
    );
    let mut reasons = Vec::new();
    for d in sessions(&s, "dns")? {
        assert!(d["job_id"].is_string(), "{d}");
        let shown = s.daemon.show_session(&d["id"])?;
        reasons.push(shown["reason"].as_str().unwrap_or_default().to_string());
    }
    assert!(
        reasons.iter().any(|r| r.contains("malformed DNS query")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("more than")),
        "{reasons:?}"
    );
    assert!(
        !s.dns.output().contains("query") && !s.dns.output().contains("malformed"),
        "{}",
        s.dns.output()
    );
    Ok(())
}

/// A network namespace of the test's own with only loopback up (a container's, as far as the
/// gateway can tell).
struct JobNetns(String);

impl JobNetns {
    fn new() -> Result<JobNetns> {
        let name = format!("gwd-{}", unique_id());
        run_ok(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = JobNetns(name);
        run_ok(Command::new("ip").args(["-n", &ns.0, "link", "set", "lo", "up"]))?;
        Ok(ns)
    }

    /// `program` run inside the namespace (nsenter, not `ip netns exec`: that one mounts a
    /// sysfs of the namespace over /sys, and with it the cgroup file system).
    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.0)).arg(program);
        cmd
    }

    /// `gateway run -- e2e-probe ARGS…` from inside the namespace.
    fn probe_in_job(&self, daemon: &Daemon, args: &[&str]) -> Result<Value> {
        let out = self
            .command(gateway_bin())
            .arg("--control-socket")
            .arg(&daemon.control_socket)
            .arg("run")
            .arg("--")
            .arg(probe_bin())
            .args(args)
            .output()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(stdout.trim()).with_context(|| {
            format!(
                "probe in {}: {stdout}{}",
                self.0,
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }
}

impl Drop for JobNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// A job in its own network namespace (a container's) asks the resolver of that namespace
/// (127.0.0.11, as Docker's embedded resolver: on the host that address is the host's own
/// loopback), over UDP and over TCP: the gateway's forwarder in that namespace asks it there,
/// follows the answers for the job, and the job reaches each address it was told through the
/// gateway; an address it was never told is refused.
#[test]
fn a_job_in_its_own_network_namespace_follows_dns_through_a_forwarder_there() -> Result<()> {
    let job_ns = JobNetns::new()?;
    let s = Setup::with_resolver_in(Some(&job_ns))?;
    let (a, b, c) = (
        Setup::address(&s.ns, 3),
        Setup::address(&s.ns, 4),
        Setup::address(&s.ns, 5),
    );
    let v = job_ns.probe_in_job(
        &s.daemon,
        &[
            "dns-follow",
            &s.resolver(),
            "api.test",
            "7000",
            "2",
            &format!("{a}:7000"),
            &format!("{c}:7000"),
        ],
    )?;
    let rounds = v["rounds"].as_array().cloned().unwrap_or_default();
    assert_eq!(rounds.len(), 2, "{v}\n{}", s.daemon.log());
    for (round, told) in rounds.iter().zip([&a, &b]) {
        assert_eq!(round["ok"], true, "{v}\n{}", s.daemon.log());
        assert_eq!(round["from"], s.resolver().as_str(), "{v}");
        assert_eq!(round["addresses"], serde_json::json!([told]), "{v}");
        let connect = &round["connects"][0];
        assert_eq!(connect["ok"], true, "{told} must be reachable: {v}");
        assert_eq!(connect["echo"], "told", "{v}");
        assert!(
            connect["local"]
                .as_str()
                .is_some_and(|l| l.starts_with("127.0.0.1:")),
            "through the gateway's listener in the namespace: {v}"
        );
    }
    assert_eq!(v["others"][0]["ok"], true, "A is still within its TTL: {v}");
    assert_eq!(
        v["others"][1]["errno"],
        libc::EPERM,
        "C was never answered: {v}"
    );
    // Over TCP in the namespace too: the resolver's third answer (B, its last).
    let v = job_ns.probe_in_job(
        &s.daemon,
        &["dns-follow-tcp", &s.resolver(), "api.test", "7000", "1"],
    )?;
    assert_eq!(v["rounds"][0]["ok"], true, "{v}\n{}", s.daemon.log());
    assert_eq!(v["rounds"][0]["addresses"], serde_json::json!([b]), "{v}");
    assert_eq!(v["rounds"][0]["connects"][0]["ok"], true, "{v}");
    api_asked_over_udp_and_tcp(&s, &s.resolver())?;
    let tcp = sessions(&s, "tcp")?;
    assert_eq!(
        tcp.iter().filter(|x| x["decision"] == "allow").count(),
        4,
        "{tcp:?}"
    );
    assert!(
        tcp.iter()
            .any(|x| x["decision"] == "deny" && x["destination"] == format!("{c}:7000")),
        "{tcp:?}"
    );
    Ok(())
}

/// A job may not bind the forwarder's port: in its own network namespace, before the gateway
/// listens there, it would receive its own (and its namespace's) queries in the forwarder's
/// place. Refused with EPERM, on loopback and on any address.
#[test]
fn a_job_may_not_bind_the_dns_forwarders_port_in_its_namespace() -> Result<()> {
    let job_ns = JobNetns::new()?;
    let s = Setup::new()?;
    for addr in [
        format!("127.0.0.1:{}", s.dns_port),
        format!("0.0.0.0:{}", s.dns_port),
    ] {
        let v = job_ns.probe_in_job(&s.daemon, &["bind-udp", &addr])?;
        assert_eq!(v["errno"], libc::EPERM, "{addr}: {v}");
    }
    assert!(
        wait_until(Duration::from_secs(5), || s.daemon.sessions().is_ok_and(
            |l| l
                .iter()
                .any(|x| x["protocol"] == "bind" && x["decision"] == "deny")
        )),
        "{:?}",
        s.daemon.sessions()?
    );
    Ok(())
}

/// A job that makes a network namespace of its own (`unshare -Urn`: its own user namespace,
/// in which it may configure that network as it likes) and serves DNS there itself, on the
/// resolver address it then asks: the gateway must not take that server's word for a target's
/// addresses (it would let the job reach any address as the target, with the target's
/// credentials). DNS of a namespace whose network the job controls is asked of the daemon's own
/// resolver, from the daemon's namespace (here a loopback address where nothing answers on the
/// host): never of the job's server, and the address that server answered stays unreachable.
#[test]
fn a_job_answering_its_own_dns_in_a_namespace_it_controls_is_not_followed() -> Result<()> {
    // The resolver is 127.0.0.11 (as with `[docker]`; a host's 127.0.0.53 stub is the same
    // case): a loopback address the job can serve in a namespace of its own.
    let containers = JobNetns::new()?;
    let s = Setup::with_resolver_in(Some(&containers))?;
    let c = Setup::address(&s.ns, 5);
    let zone = s.zone.with_file_name("own-zone");
    std::fs::write(&zone, format!("api.test 30 {c}\n"))?;
    let log = s.zone.with_file_name("own-dns.log");
    let script = format!(
        "ip link set lo up || exit 3; {dns} 127.0.0.11:53 {zone} > {log} 2>&1 & \
         for i in $(seq 100); do grep -q listening {log} && break; sleep 0.1; done; \
         {probe} dns-follow-tcp 127.0.0.11:53 api.test 7000 1 {c}:7000; kill $!",
        dns = dns_bin().display(),
        zone = zone.display(),
        log = log.display(),
        probe = probe_bin().display(),
    );
    let out = s
        .daemon
        .run_job(&[], "unshare", &["-Urn", "sh", "-c", &script]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(stdout.trim()).with_context(|| {
        format!(
            "job: {stdout}{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    })?;
    let connects = v["rounds"][0]["connects"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for connect in connects
        .iter()
        .chain(v["others"].as_array().into_iter().flatten())
    {
        assert_ne!(
            connect["ok"], true,
            "{c} reached on the job's own answer: {v}"
        );
    }
    assert_eq!(v["others"][0]["errno"], libc::EPERM, "{v}");
    assert!(
        s.echo.accepted().is_empty(),
        "{:?}\n{v}\n{}",
        s.echo.accepted(),
        s.daemon.log()
    );
    let own = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!own.contains("query"), "the job's server was asked: {own}");
    let dns = sessions(&s, "dns")?;
    assert!(
        dns.iter().all(|x| x["target"].is_null()),
        "nothing followed: {dns:?}"
    );
    // On record: asked of the daemon's resolver, from the daemon's namespace, unanswered.
    let asked = dns
        .iter()
        .find(|x| x["destination"] == "127.0.0.11:53")
        .with_context(|| format!("{dns:?}"))?;
    let shown = s.daemon.show_session(&asked["id"])?;
    assert!(
        shown["reason"]
            .as_str()
            .is_some_and(|r| r.contains("no answer from the resolver")),
        "{shown}"
    );
    let detail = dns_detail(&s, asked)?;
    assert_eq!(detail["transport"], "tcp", "{shown}");
    assert_eq!(detail["asked_from"], "daemon", "{detail}");
    assert_eq!(detail["asked"], "127.0.0.11:53", "{detail}");
    Ok(())
}

/// Runs `script` (sh) as a job in a network namespace of its own (`unshare -Urn`: its own user
/// namespace, in which it configures that network as it likes); one JSON value per line of its
/// output. `log`: a file whose text is shown when the output is not JSON.
fn run_in_own_namespace(s: &Setup, script: &str, log: &std::path::Path) -> Result<Vec<Value>> {
    let out = s
        .daemon
        .run_job(&[], "unshare", &["-Urn", "sh", "-c", script]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .map(|l| {
            serde_json::from_str(l.trim()).with_context(|| {
                format!(
                    "job: {stdout}{}\n{}",
                    String::from_utf8_lossy(&out.stderr),
                    std::fs::read_to_string(log).unwrap_or_default()
                )
            })
        })
        .collect()
}

/// A rootless job (`unshare -Urn`) gets host-name targets all the same, from the daemon's own
/// resolver and never from its namespace: it puts the resolver's address on its own loopback and
/// answers there itself (a third address), and asks over UDP and TCP. The gateway's forwarder in
/// that namespace asks the daemon's resolver from the daemon's network namespace; the job is
/// given, and reaches, what that resolver answered; the job's own server is never asked and its
/// address stays unreachable.
#[test]
fn a_job_in_a_namespace_it_controls_is_answered_by_the_daemons_resolver_not_its_own() -> Result<()>
{
    let s = Setup::new()?;
    let (a, b, c) = (
        Setup::address(&s.ns, 3),
        Setup::address(&s.ns, 4),
        Setup::address(&s.ns, 5),
    );
    let resolver = s.resolver();
    let zone = s.zone.with_file_name("own-zone");
    std::fs::write(&zone, format!("api.test 30 {c}\n"))?;
    let log = s.zone.with_file_name("own-dns.log");
    let script = format!(
        "ip link set lo up || exit 3; ip addr add {ip}/32 dev lo || exit 4; \
         {dns} {resolver} {zone} > {log} 2>&1 & \
         for i in $(seq 100); do grep -q listening {log} && break; sleep 0.1; done; \
         {probe} dns-follow {resolver} api.test 7000 2 {c}:7000; \
         {probe} dns-follow-tcp {resolver} api.test 7000 1; kill $!",
        ip = s.ns.remote_ip,
        dns = dns_bin().display(),
        zone = zone.display(),
        log = log.display(),
        probe = probe_bin().display(),
    );
    let out = run_in_own_namespace(&s, &script, &log)?;
    anyhow::ensure!(out.len() == 2, "{out:?}");
    let (udp, tcp) = (&out[0], &out[1]);
    let own = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(own.contains("listening"), "the job's server ran: {own}");
    assert!(
        !own.contains("query"),
        "the job's own server was asked: {own}\n{udp}\n{tcp}"
    );
    let rounds = udp["rounds"].as_array().cloned().unwrap_or_default();
    assert_eq!(rounds.len(), 2, "{udp}\n{}", s.daemon.log());
    for (round, told) in rounds.iter().zip([&a, &b]) {
        assert_eq!(round["ok"], true, "{udp}\n{}", s.daemon.log());
        assert_eq!(round["from"], resolver.as_str(), "{udp}");
        assert_eq!(round["addresses"], serde_json::json!([told]), "{udp}");
        let connect = &round["connects"][0];
        assert_eq!(connect["ok"], true, "{told} must be reachable: {udp}");
        assert_eq!(connect["echo"], "told", "{udp}");
    }
    assert_eq!(
        udp["others"][0]["errno"],
        libc::EPERM,
        "the job's own answer: {udp}"
    );
    assert_eq!(tcp["rounds"][0]["ok"], true, "{tcp}\n{}", s.daemon.log());
    assert_eq!(
        tcp["rounds"][0]["addresses"],
        serde_json::json!([b]),
        "{tcp}"
    );
    assert_eq!(tcp["rounds"][0]["connects"][0]["ok"], true, "{tcp}");
    for d in api_asked_over_udp_and_tcp(&s, &resolver)? {
        let detail = dns_detail(&s, &d)?;
        assert_eq!(detail["asked"], resolver.as_str(), "{detail}");
        assert_eq!(detail["asked_from"], "daemon", "{detail}");
    }
    Ok(())
}

/// The real resolver was asked `api.test` over UDP and over TCP, and the three queries of the
/// job's rounds are recorded allowed, each attributed to the job, for `api`, at `resolver`.
fn api_asked_over_udp_and_tcp(s: &Setup, resolver: &str) -> Result<Vec<Value>> {
    let out = s.dns.output();
    assert!(out.contains("query api.test A udp"), "{out}");
    assert!(out.contains("query api.test A tcp"), "{out}");
    let dns = sessions(s, "dns")?;
    let allowed: Vec<Value> = dns
        .iter()
        .filter(|x| x["decision"] == "allow")
        .cloned()
        .collect();
    assert_eq!(allowed.len(), 3, "one record per query: {dns:?}");
    for d in &allowed {
        assert!(d["job_id"].is_string(), "attributed to the job: {d}");
        assert_eq!(d["target"], "api", "{d}");
        assert_eq!(d["destination"], resolver, "{d}");
    }
    Ok(allowed)
}

/// In a namespace of another user namespace, someone other than the job (a process of the
/// namespace's owner outside the job's cgroup, which the bind hook does not cover) holds the
/// forwarder's port before the daemon opens its forwarder there, and answers the job's queries
/// with a third address. The daemon's bind there fails, so it serves nothing in that namespace:
/// nothing the squatter says is followed, and neither its address nor the target's real ones are
/// reachable from there.
#[test]
fn a_squatter_on_the_forwarders_port_in_a_namespace_the_job_controls_gets_nothing_followed()
-> Result<()> {
    let s = Setup::new()?;
    let (a, c) = (Setup::address(&s.ns, 3), Setup::address(&s.ns, 5));
    let zone = s.zone.with_file_name("squat-zone");
    std::fs::write(&zone, format!("api.test 30 {c}\n"))?;
    let log = s.zone.with_file_name("squat.log");
    let squatter = Process::spawn(
        "squatter",
        Command::new("unshare").args([
            "-Urn",
            "sh",
            "-c",
            &format!(
                "ip link set lo up && exec {} 127.0.0.1:{} {}",
                dns_bin().display(),
                s.dns_port,
                zone.display()
            ),
        ]),
        log,
    )?;
    ensure!(
        wait_until(Duration::from_secs(10), || squatter
            .output()
            .contains("listening")),
        "the squatter did not start: {}",
        squatter.output()
    );
    let target = squatter.pid().to_string();
    let out = s.daemon.run_job(
        &[],
        "nsenter",
        &[
            "-t",
            &target,
            "-U",
            "-n",
            "--preserve-credentials",
            &probe_bin().display().to_string(),
            "dns-follow",
            &s.resolver(),
            "api.test",
            "7000",
            "1",
            &format!("{c}:7000"),
            &format!("{a}:7000"),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(stdout.trim()).with_context(|| {
        format!(
            "job: {stdout}{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            squatter.output()
        )
    })?;
    for connect in v["rounds"][0]["connects"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(v["others"].as_array().into_iter().flatten())
    {
        assert_ne!(connect["ok"], true, "reached from the namespace: {v}");
    }
    assert_eq!(v["others"][0]["errno"], libc::EPERM, "{v}");
    assert_eq!(v["others"][1]["errno"], libc::EPERM, "{v}");
    let dns = sessions(&s, "dns")?;
    assert!(
        dns.iter().all(|x| x["target"].is_null()),
        "nothing followed: {dns:?}"
    );
    assert!(
        s.daemon.log().contains("cannot listen for DNS on port"),
        "{}",
        s.daemon.log()
    );
    Ok(())
}
/// `[[issuers]]` for a test issuer; `extra`: more keys (`max_binding_lifetime`).
fn issuer_toml(issuer: &Issuer, extra: &str) -> String {
    format!(
        "[[issuers]]\nurl = \"{}\"\naudiences = [\"https://gateway.test\"]\nca_file = \"{}\"\nfetch_timeout = \"2s\"\n{extra}\n",
        issuer.url,
        issuer.tls.ca.display()
    )
}

/// Binds a new cgroup to a token of `issuer` (`gateway attach`); the cgroup and the job.
fn bound_job(s: &Setup, issuer: &Issuer, dir: &TempDir, name: &str) -> Result<(TestCgroup, Value)> {
    let file = dir.path().join(format!("{name}.jwt"));
    std::fs::write(&file, issuer.client_token("ci-app")?)?;
    let cg = TestCgroup::new(name)?;
    let out = s.daemon.cli(&[
        "attach",
        "--cgroup",
        cg.path.to_str().expect("path"),
        "--token-file",
        file.to_str().expect("path"),
        "--json",
    ]);
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((cg, serde_json::from_slice(&out.stdout)?))
}

/// The recorded queries of one job, oldest first.
fn job_queries(s: &Setup, job: &Value) -> Result<Vec<Value>> {
    let mut dns: Vec<Value> = sessions(s, "dns")?
        .into_iter()
        .filter(|x| x["job_id"] == *job)
        .collect();
    dns.sort_by_key(|x| x["id"].as_i64());
    Ok(dns)
}

/// What a job asks is answered as its connects are decided: past its binding, or bound to no
/// identity the rules let connect anywhere, its queries over UDP and TCP are refused (REFUSED,
/// recorded as refused `dns` sessions) and nothing is followed for it; bound, an answer is
/// followed only for the targets it may connect to.
#[test]
fn dns_is_answered_and_followed_only_for_what_the_jobs_binding_may_connect_to() -> Result<()> {
    let dir = TempDir::new(&format!("q{}", unique_id()));
    // Jobs bound through `short` expire after 2s, through `long` after the default.
    let short = Issuer::start(dir.path(), Mode::Real)?;
    let long = Issuer::start(dir.path(), Mode::Real)?;
    let rules = format!(
        r#"{}{}
# Only bound jobs of acme/app, and only to "api" ("cdn" is named by no rule).
[[rules]]
name = "acme"
action = "allow"
targets = ["api"]
claims = {{ repository = "acme/app" }}
"#,
        issuer_toml(&short, "max_binding_lifetime = \"2s\""),
        issuer_toml(&long, ""),
    );
    let s = Setup::with_config(None, "", &rules)?;
    let (a, c) = (Setup::address(&s.ns, 3), Setup::address(&s.ns, 5));
    let refused = "Query Refused";

    let (expiring, job) = bound_job(&s, &short, &dir, "dnsexp")?;
    let until = chrono::DateTime::parse_from_rfc3339(
        job["binding_expires_at"].as_str().expect("bound until"),
    )?;
    // Wait (by the clock, not by a guess) until the binding has run out.
    while chrono::Utc::now() <= until {
        std::thread::sleep(Duration::from_millis(200));
    }
    let udp = expiring.probe(&[
        "dns-follow",
        &s.resolver(),
        "api.test",
        "7000",
        "1",
        &format!("{a}:7000"),
    ])?;
    assert_eq!(udp["rounds"][0]["rcode"], refused, "{udp}");
    assert_eq!(
        udp["rounds"][0]["addresses"],
        serde_json::json!([]),
        "{udp}"
    );
    // Nothing was followed: the address is no target at all.
    assert_eq!(udp["others"][0]["errno"], libc::EPERM, "{udp}");
    let tcp = expiring.probe(&["dns-follow-tcp", &s.resolver(), "api.test", "7000", "1"])?;
    assert_eq!(tcp["rounds"][0]["rcode"], refused, "{tcp}");
    assert_eq!(
        tcp["rounds"][0]["addresses"],
        serde_json::json!([]),
        "{tcp}"
    );
    let queries = job_queries(&s, &job["id"])?;
    assert_eq!(queries.len(), 2, "{queries:?}");
    for q in &queries {
        assert_eq!(q["decision"], "deny", "{q}");
        let shown = s.daemon.show_session(&q["id"])?;
        assert!(
            shown["reason"]
                .as_str()
                .is_some_and(|r| r.contains("identity binding of job")),
            "{shown}"
        );
        let detail = dns_detail(&s, q)?;
        assert_eq!(detail["name"], "api.test", "{detail}");
        assert!(detail.get("followed").is_none(), "{detail}");
    }
    assert!(
        !s.dns.output().contains("query api.test"),
        "a refused query never reaches the resolver: {}",
        s.dns.output()
    );

    // A job bound to no identity (no token) is let connect nowhere: its DNS is refused too.
    let unbound = s
        .daemon
        .probe_in_job(&["dns-follow", &s.resolver(), "api.test", "7000", "1"])?;
    assert_eq!(unbound["rounds"][0]["rcode"], refused, "{unbound}");
    let denied = sessions(&s, "dns")?;
    assert!(
        denied.iter().any(|q| q["identity"] == "unauthenticated"
            && q["decision"] == "deny"
            && s.daemon.show_session(&q["id"]).is_ok_and(|x| x["reason"]
                .as_str()
                .is_some_and(|r| r.contains("no rule allows")))),
        "{denied:?}"
    );

    // Control: bound (and in time), the same query is answered and followed, and the address
    // reached; a name of a target it may not connect to is answered, not followed.
    let (fresh, job) = bound_job(&s, &long, &dir, "dnsok")?;
    let v = fresh.probe(&["dns-follow", &s.resolver(), "api.test", "7000", "1"])?;
    assert_eq!(v["rounds"][0]["addresses"], serde_json::json!([a]), "{v}");
    assert_eq!(v["rounds"][0]["connects"][0]["echo"], "told", "{v}");
    let v = fresh.probe(&["dns-follow", &s.resolver(), "img.cdn.test", "7000", "1"])?;
    assert_eq!(v["rounds"][0]["addresses"], serde_json::json!([c]), "{v}");
    assert_eq!(v["rounds"][0]["connects"][0]["errno"], libc::EPERM, "{v}");
    let queries = job_queries(&s, &job["id"])?;
    assert_eq!(queries.len(), 2, "{queries:?}");
    assert!(
        queries.iter().all(|q| q["decision"] == "allow"),
        "{queries:?}"
    );
    let detail = dns_detail(&s, &queries[1])?;
    assert!(
        detail["followed"][0]["refused"]
            .as_str()
            .is_some_and(|r| r.contains("no rule allows")),
        "{detail}"
    );
    Ok(())
}

/// A job's DNS socket outlives the job (`gateway detach`, a runner releasing the cgroup while a
/// process lingers): what it sends to the forwarder afterwards is refused and recorded, never
/// answered or followed for a job that is gone.
#[test]
fn a_query_from_a_socket_of_a_job_that_has_ended_is_refused() -> Result<()> {
    use std::io::{BufRead as _, Write as _};
    let s = Setup::new()?;
    let cg = TestCgroup::new("dnsend")?;
    let path = cg.path.to_str().expect("path");
    let out = s.daemon.cli(&["attach", "--cgroup", path, "--json"]);
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut probe = Command::new(probe_bin())
        .arg("--cgroup")
        .arg(&cg.path)
        .args(["dns-hold", &s.resolver(), "api.test"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut lines = std::io::BufReader::new(probe.stdout.take().context("stdout")?).lines();
    // Asked once while the job is attached: answered.
    let ready = lines.next().context("the probe printed nothing")??;
    ensure!(ready.contains(r#""ready":true"#), "{ready}");
    let out = s.daemon.cli(&["detach", "--cgroup", path]);
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Now the socket (connected to the forwarder while the job was attached) asks.
    probe.stdin.take().context("stdin")?.write_all(b"ask\n")?;
    let answer: Value = serde_json::from_str(&lines.next().context("no answer line")??)?;
    probe.wait()?;
    assert_eq!(answer["rcode"], "Query Refused", "{answer}");
    assert_eq!(answer["addresses"], serde_json::json!([]), "{answer}");
    let mut dns = sessions(&s, "dns")?;
    dns.sort_by_key(|x| x["id"].as_i64());
    assert_eq!(dns.len(), 2, "{dns:?}");
    assert_eq!(dns[0]["decision"], "allow", "{dns:?}");
    assert_eq!(dns[1]["decision"], "deny", "{dns:?}");
    let shown = s.daemon.show_session(&dns[1]["id"])?;
    assert!(
        shown["reason"]
            .as_str()
            .is_some_and(|r| r.contains("has ended")),
        "{shown}"
    );
    assert_eq!(
        s.dns.output().matches("query api.test").count(),
        1,
        "the refused query never reaches the resolver: {}",
        s.dns.output()
    );
    Ok(())
}

/// Where jobs reach more than targets (`allow_direct`), a job no rule lets connect to any target
/// still has its DNS answered: it reaches the direct destinations by name.
#[test]
fn a_job_with_no_target_keeps_its_dns_where_allow_direct_lets_it_reach_more() -> Result<()> {
    let s = Setup::with_config(None, "allow_direct = [\"@C@:7000\"]", "")?;
    let c = Setup::address(&s.ns, 5);
    let v = s
        .daemon
        .probe_in_job(&["dns-follow", &s.resolver(), "cdn.test", "7000", "1"])?;
    assert_eq!(v["rounds"][0]["rcode"], "No Error", "{v}");
    assert_eq!(v["rounds"][0]["addresses"], serde_json::json!([c]), "{v}");
    assert_eq!(v["rounds"][0]["connects"][0]["echo"], "told", "{v}");
    // The name of a target it may not connect to is answered, not followed.
    let v = s
        .daemon
        .probe_in_job(&["dns-follow", &s.resolver(), "api.test", "7000", "1"])?;
    assert_eq!(v["rounds"][0]["rcode"], "No Error", "{v}");
    assert_eq!(v["rounds"][0]["connects"][0]["errno"], libc::EPERM, "{v}");
    Ok(())
}
