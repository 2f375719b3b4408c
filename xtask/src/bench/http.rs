//! HTTP target: requests per second over keep-alive (HTTP/1.1 and HTTP/2), added latency, new TLS
//! connection setup and memory per idle keep-alive connection, against the same nginx reached
//! directly and through haproxy in HTTP mode (terminating TLS and re-encrypting, as the gateway
//! does), in one run. The gateway decides every request with rules, injects a token, masks the
//! response body and records each request write-ahead. Targets (issue 14): ≥ 1.0× haproxy
//! requests/s, added p50 ≤ 0.2 ms, ≤ 64 KiB per idle connection.

use std::{fs, path::Path, process::Command, time::Duration};

use anyhow::{Context as _, Result, bail, ensure};
use gateway_e2e::{
    Daemon, DaemonConfig, Netns, Process, TempDir, free_port, gateway_bin,
    http::{HOST, Nginx},
    relay_bin, unique_id, wait_until,
};

use super::{Measured, ROUNDS, median, row};

/// Requests per throughput measurement.
const REQUESTS: &str = "20000";
/// Sequential requests on one connection for the latency measurement.
const LATENCY_REQUESTS: &str = "2000";
/// New TLS connections, one request each, for the setup measurement.
const NEW_CONNECTIONS: usize = 100;
/// Idle keep-alive connections held open for the memory measurement.
const IDLE: usize = 256;

#[derive(Clone, Copy, PartialEq)]
enum Route {
    Direct,
    Haproxy,
    Gateway,
    /// The gateway's stack (tokio, rustls, hyper) relaying with nothing on top (`e2e-relay`).
    Floor,
    /// Another build of the gateway (`BENCH_GATEWAY_BASELINE`), for comparing a change in one run.
    Baseline,
}

impl Route {
    fn name(self) -> &'static str {
        match self {
            Route::Direct => "direct",
            Route::Haproxy => "haproxy (http mode)",
            Route::Gateway => "gateway (all on)",
            Route::Floor => "stack floor (relay)",
            Route::Baseline => "baseline gateway (all on)",
        }
    }
}

/// A small JSON API response with a field the masking rule covers.
fn users_json() -> String {
    let users: Vec<String> = (0..8)
        .map(|i| {
            format!(
                r#"{{"id":{i},"name":"user {i}","email":"user{i}@example.com","ssn":"123-45-67{i:02}","plan":"team"}}"#
            )
        })
        .collect();
    format!(r#"{{"users":[{}],"next":null}}"#, users.join(","))
}

pub(super) fn run() -> Result<()> {
    let id = unique_id();
    let dir = TempDir::new(&format!("bh{id}"));
    let ns = Netns::new(&id)?;
    let nginx = Nginx::start(&ns, dir.path())?;
    nginx.put_file("users.json", users_json().as_bytes())?;
    let upstream = format!("{}:443", nginx.addr);

    // haproxy terminates TLS with a certificate of its own and re-encrypts to nginx, verified,
    // over HTTP/1.1 (from HTTP/2 it answers HTTP/1.1 clients without a reason phrase, which
    // h2load counts as a failure).
    let pki = gateway_e2e::pki::TestPki::new(dir.path(), "haproxy")?;
    let (cert, key) = pki.issue("haproxy", &format!("DNS:{HOST}"))?;
    let pem = dir.path().join("haproxy-crt.pem");
    fs::write(&pem, [fs::read(&cert)?, fs::read(&key)?].concat())?;
    let (haproxy, haproxy_port) = super::haproxy(dir.path(), "http", |port| {
        format!(
            "frontend web\n    bind 127.0.0.1:{port} ssl crt {pem} alpn h2,http/1.1\n    default_backend nginx\nbackend nginx\n    http-reuse always\n    server nginx1 {upstream} ssl verify required ca-file {ca} sni str({HOST}) alpn http/1.1\n",
            pem = pem.display(),
            ca = nginx.ca.display(),
        )
    })?;

    // The floor: the same stack as the gateway relaying with nothing on top, with haproxy's
    // certificate.
    let floor_port = free_port();
    let floor = Process::spawn(
        "e2e-relay",
        Command::new(relay_bin()).args([
            format!("127.0.0.1:{floor_port}"),
            cert.display().to_string(),
            key.display().to_string(),
            upstream.clone(),
            nginx.ca.display().to_string(),
            HOST.to_string(),
        ]),
        dir.path().join("relay.log"),
    )?;
    super::pin_proxy(floor.pid())?;
    ensure!(
        wait_until(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", floor_port)).is_ok()
        }),
        "e2e-relay did not start: {}",
        fs::read_to_string(dir.path().join("relay.log")).unwrap_or_default()
    );

    let token_file = dir.path().join("token");
    fs::write(&token_file, "bench-token\n")?;
    let body = format!(
        r#"
[[targets]]
name = "api"
protocol = "http"
address = "{upstream}"
[targets.http]
tls = "terminate"
ca_file = "{ca}"
hosts = ["{HOST}"]
[targets.credentials]
token_file = "{token_file}"

[[rules]]
name = "no-deletes"
action = "deny"
targets = ["api"]
unauthenticated = true
[rules.http]
methods = ["DELETE"]

[[masking]]
name = "api-pii"
targets = ["api"]
json_fields = ["ssn"]
detectors = ["email"]

[[rules]]
name = "no-admin"
action = "deny"
targets = ["api"]
unauthenticated = true
[rules.http]
paths = ["/admin/*"]

[[rules]]
name = "jobs-may-call-the-api"
action = "allow"
targets = ["api"]
unauthenticated = true
"#,
        ca = nginx.ca.display(),
        token_file = token_file.display(),
    );
    let daemon = Daemon::builder(DaemonConfig {
        server: String::new(),
        body: body.clone(),
    })
    .default_log_level()
    .start()?;
    super::pin_proxy(daemon.pid())?;
    // BENCH_GATEWAY_BASELINE=PATH: a second daemon runs that build of the gateway (main's, say)
    // with the same configuration, measured in the same rounds as this one.
    let baseline = std::env::var_os("BENCH_GATEWAY_BASELINE")
        .map(|bin| {
            Daemon::builder(DaemonConfig {
                server: String::new(),
                body,
            })
            .default_log_level()
            .env("BENCH_BASELINE_BIN", &bin.to_string_lossy())
            .wrapper(&[
                "sh",
                "-c",
                "shift; exec \"$BENCH_BASELINE_BIN\" \"$@\"",
                "sh",
            ])
            .start()
        })
        .transpose()?;
    if let Some(b) = &baseline {
        super::pin_proxy(b.pid())?;
    }

    let url = format!("https://{HOST}/files/users.json");
    // h2load in the job for the gateway (its connects are redirected), on the host otherwise.
    let h2load = |path: Route, args: &[&str]| -> Result<String> {
        let connect_to = match path {
            Route::Haproxy => format!("--connect-to=127.0.0.1:{haproxy_port}"),
            Route::Floor => format!("--connect-to=127.0.0.1:{floor_port}"),
            _ => format!("--connect-to={upstream}"),
        };
        let through = match path {
            Route::Gateway => Some(&daemon),
            Route::Baseline => baseline.as_ref(),
            _ => None,
        };
        let mut cmd = match through {
            Some(d) => {
                let mut c = Command::new(gateway_bin());
                c.arg("--control-socket")
                    .arg(&d.control_socket)
                    .args(["run", "--", "h2load"]);
                c
            }
            None => Command::new("h2load"),
        };
        cmd.args(args).arg(&connect_to).arg(&url);
        let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        ensure!(
            out.status.success() && !text.contains(" 0 succeeded"),
            "{cmd:?} failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(text)
    };

    let paths = [Route::Direct, Route::Haproxy, Route::Gateway, Route::Floor];
    for p in paths
        .into_iter()
        .chain(baseline.as_ref().map(|_| Route::Baseline))
    {
        let warm = h2load(p, &["-n", "200", "-c", "2"])?;
        all_succeeded(&warm, "200")?;
    }
    if let Some(n) = std::env::var_os("BENCH_HTTP_CPU") {
        let n = n
            .to_str()
            .and_then(|n| n.parse().ok())
            .context("BENCH_HTTP_CPU: a number of requests")?;
        let mut routes = vec![(Route::Haproxy, haproxy.pid()), (Route::Floor, floor.pid())];
        routes.extend(baseline.as_ref().map(|b| (Route::Baseline, b.pid())));
        routes.push((Route::Gateway, daemon.pid()));
        return cpu_per_request(&h2load, &routes, n);
    }
    let mut h1 = vec![Vec::new(); paths.len()];
    let mut h2 = vec![Vec::new(); paths.len()];
    let mut p50 = vec![Vec::new(); paths.len()];
    let mut setup = vec![Vec::new(); paths.len()];
    let log = dir.path().join("h2load.log");
    // Interleaved rounds, so that background noise hits every path alike.
    for _ in 0..ROUNDS {
        for (i, p) in paths.iter().enumerate() {
            let out = h2load(*p, &["--h1", "-n", REQUESTS, "-c", "8"])?;
            all_succeeded(&out, REQUESTS)?;
            h1[i].push(requests_per_second(&out)?);
            let out = h2load(*p, &["-n", REQUESTS, "-c", "4", "-m", "8"])?;
            all_succeeded(&out, REQUESTS)?;
            h2[i].push(requests_per_second(&out)?);
            let log_arg = format!("--log-file={}", log.display());
            let out = h2load(*p, &["--h1", "-n", LATENCY_REQUESTS, "-c", "1", &log_arg])?;
            all_succeeded(&out, LATENCY_REQUESTS)?;
            p50[i].push(median(request_durations_us(&log)?));
            setup[i].push(new_connection_setup_us(&h2load, *p)?);
        }
    }
    let h1m: Vec<Measured> = h1.into_iter().map(Measured::of).collect();
    let h2m: Vec<Measured> = h2.into_iter().map(Measured::of).collect();
    let h1: Vec<f64> = h1m.iter().map(|m| m.median).collect();
    let h2: Vec<f64> = h2m.iter().map(|m| m.median).collect();
    let p50: Vec<f64> = p50.into_iter().map(median).collect();
    let setup: Vec<f64> = setup.into_iter().map(median).collect();

    println!(
        "\nHTTP target — nginx over TLS, a 1 KiB JSON response; median of {ROUNDS} interleaved rounds"
    );
    println!(
        "{}",
        row(&[
            "path".into(),
            "h1 req/s".into(),
            "h2 req/s".into(),
            "p50 µs".into(),
            "new TLS µs".into()
        ])
    );
    for (i, p) in paths.iter().enumerate() {
        println!(
            "{}",
            row(&[
                p.name().into(),
                h1m[i].show(0),
                h2m[i].show(0),
                format!("{:.0}", p50[i]),
                format!("{:.0}", setup[i]),
            ])
        );
    }
    println!(
        "target: gateway ≥ 1.0× haproxy requests/s → HTTP/1.1 {:.2}×, HTTP/2 {:.2}×",
        h1[2] / h1[1],
        h2[2] / h2[1]
    );
    println!(
        "the stack's floor (relay, nothing on top) → HTTP/1.1 {:.2}×, HTTP/2 {:.2}× haproxy; the gateway does {:.2}× and {:.2}× of the floor's requests/s",
        h1[3] / h1[1],
        h2[3] / h2[1],
        h1[2] / h1[3],
        h2[2] / h2[3]
    );
    println!(
        "target: added p50 ≤ 200 µs → gateway +{:.0} µs over direct (haproxy +{:.0} µs)",
        p50[2] - p50[0],
        p50[1] - p50[0]
    );

    let idle_haproxy = idle_kib_per_connection(haproxy.pid(), |script| {
        let mut c = Command::new("python3");
        c.arg(script)
            .arg(format!("127.0.0.1:{haproxy_port}"))
            .arg(IDLE.to_string());
        c
    })?;
    let idle_gateway = idle_kib_per_connection(daemon.pid(), |script| {
        let mut c = Command::new(gateway_bin());
        c.arg("--control-socket")
            .arg(&daemon.control_socket)
            .args(["run", "--", "python3"])
            .arg(script)
            .arg(&upstream)
            .arg(IDLE.to_string());
        c
    })?;
    println!(
        "target: ≤ 64 KiB per idle keep-alive connection → gateway {idle_gateway:.1} KiB (haproxy {idle_haproxy:.1} KiB), {IDLE} connections"
    );
    let sessions = daemon.sessions()?.len();
    println!("(gateway recorded {sessions} sessions during the run)");
    Ok(())
}

/// BENCH_HTTP_CPU=N: CPU time per request of haproxy and of the gateway, over N requests
/// (HTTP/1.1, 8 connections; HTTP/2, 4 connections of 8 streams). CPU per request hardly moves
/// with the machine's load (requests per second do), so it shows what a change costs or saves.
/// With BENCH_PERF_DIR, the first round of each is sampled with `perf record -g`, for the gateway
/// and for the floor.
fn cpu_per_request(
    h2load: &dyn Fn(Route, &[&str]) -> Result<String>,
    routes: &[(Route, u32)],
    requests: u64,
) -> Result<()> {
    let n = requests.to_string();
    let loads: [(&str, Vec<&str>); 2] = [
        ("h1", vec!["--h1", "-n", &n, "-c", "8"]),
        ("h2", vec!["-n", &n, "-c", "4", "-m", "8"]),
    ];
    let mut per = vec![vec![Vec::new(); routes.len()]; loads.len()];
    for round in 0..ROUNDS {
        for (l, (name, args)) in loads.iter().enumerate() {
            for (r, (route, pid)) in routes.iter().enumerate() {
                let profiled = match route {
                    Route::Gateway => Some(format!("http-cpu-{name}")),
                    Route::Floor => Some(format!("http-cpu-{name}-floor")),
                    _ => None,
                };
                let perf = profiled
                    .filter(|_| round == 0)
                    .map(|file| super::profile(*pid, &file, None))
                    .transpose()?
                    .flatten();
                if perf.is_some() {
                    // perf needs a moment to attach before the measured requests start.
                    std::thread::sleep(Duration::from_millis(500));
                }
                let (u0, s0) = super::postgres::cpu_seconds(*pid)?;
                let out = h2load(*route, args)?;
                let (u1, s1) = super::postgres::cpu_seconds(*pid)?;
                if let Some(perf) = perf {
                    super::stop_profile(perf)?;
                }
                all_succeeded(&out, &n)?;
                per[l][r].push(((u1 - u0) + (s1 - s0)) * 1e6 / requests as f64);
            }
        }
    }
    println!(
        "\nHTTP — CPU µs per request (user + system), {requests} requests, median of {ROUNDS} interleaved rounds"
    );
    for (l, (name, _)) in loads.iter().enumerate() {
        let measured: Vec<Measured> = per[l].iter().cloned().map(Measured::of).collect();
        let of = |route: Route| {
            routes
                .iter()
                .position(|(r, _)| *r == route)
                .map(|i| measured[i].median)
        };
        let (haproxy, gateway, floor) = (
            of(Route::Haproxy).context("haproxy")?,
            of(Route::Gateway).context("gateway")?,
            of(Route::Floor).context("floor")?,
        );
        let shown: Vec<String> = routes
            .iter()
            .zip(&measured)
            .map(|((route, _), m)| format!("{} {}", route.name(), m.show(1)))
            .collect();
        println!(
            "{name}: {}; the gateway uses {:.2}× haproxy's CPU per request",
            shown.join("; "),
            gateway / haproxy
        );
        println!(
            "{name}: the stack's floor uses {:.2}× haproxy's CPU per request; the gateway {:.2}× the floor's",
            floor / haproxy,
            gateway / floor
        );
        if let Some(baseline) = of(Route::Baseline) {
            println!(
                "{name}: the gateway uses {:.2}× the baseline's CPU per request",
                gateway / baseline
            );
        }
    }
    Ok(())
}

/// h2load's summary: every request done and answered 2xx.
fn all_succeeded(out: &str, total: &str) -> Result<()> {
    let line = out
        .lines()
        .find(|l| l.starts_with("requests:"))
        .context("h2load printed no requests line")?;
    let expected = format!("{total} succeeded, 0 failed");
    let status = out
        .lines()
        .find(|l| l.starts_with("status codes:"))
        .unwrap_or("");
    if !line.contains(&expected) || !status.starts_with(&format!("status codes: {total} 2xx")) {
        bail!("not every request succeeded: {line} / {status}\n{out}");
    }
    Ok(())
}

/// "finished in 1.23s, 16260.16 req/s, 1.2MB/s" → 16260.16
fn requests_per_second(out: &str) -> Result<f64> {
    out.lines()
        .find(|l| l.starts_with("finished in"))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|f| f.strip_suffix(" req/s"))
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no req/s in h2load output:\n{out}"))
}

/// h2load's log file: one line per request, `start<TAB>status<TAB>duration µs`.
fn request_durations_us(log: &Path) -> Result<Vec<f64>> {
    let text = fs::read_to_string(log)?;
    let durations: Vec<f64> = text
        .lines()
        .filter_map(|l| l.split('\t').nth(2)?.trim().parse().ok())
        .collect();
    ensure!(!durations.is_empty(), "empty h2load log");
    Ok(durations)
}

/// Median "time to 1st byte" of single-request runs: a new TCP and TLS connection each.
fn new_connection_setup_us(
    h2load: &dyn Fn(Route, &[&str]) -> Result<String>,
    path: Route,
) -> Result<f64> {
    let mut times = Vec::with_capacity(NEW_CONNECTIONS);
    for _ in 0..NEW_CONNECTIONS {
        let out = h2load(path, &["--h1", "-n", "1", "-c", "1"])?;
        all_succeeded(&out, "1")?;
        times.push(first_byte_us(&out)?);
    }
    Ok(median(times))
}

/// "time to 1st byte:    1.23ms    1.23ms ..." → the min column in µs.
fn first_byte_us(out: &str) -> Result<f64> {
    let line = out
        .lines()
        .find(|l| l.starts_with("time to 1st byte:"))
        .with_context(|| format!("no time to 1st byte in:\n{out}"))?;
    let value = line
        .trim_start_matches("time to 1st byte:")
        .split_whitespace()
        .next()
        .context("empty time to 1st byte")?;
    let (number, scale) = if let Some(n) = value.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = value.strip_suffix("ms") {
        (n, 1000.0)
    } else if let Some(n) = value.strip_suffix('s') {
        (n, 1_000_000.0)
    } else {
        bail!("time unit of {value:?}")
    };
    Ok(number.parse::<f64>()? * scale)
}

/// Opens `IDLE` keep-alive TLS connections (one request each, then idle) with the client the
/// command runs, and returns the growth of `pid`'s resident memory per connection in KiB.
fn idle_kib_per_connection(pid: u32, command: impl Fn(&Path) -> Command) -> Result<f64> {
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/peers/http/idle_connections.py");
    let before = rss_kib(pid)?;
    let mut cmd = command(&script);
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("{cmd:?}"))?;
    let mut stdout = std::io::BufReader::new(child.stdout.take().context("stdout")?);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line)?;
    // Let the peers settle their buffers before measuring.
    std::thread::sleep(Duration::from_secs(1));
    let after = rss_kib(pid);
    drop(child.stdin.take());
    let status = child.wait()?;
    ensure!(
        line.trim() == format!("{IDLE} open"),
        "idle client: {line:?} ({status})"
    );
    Ok((after? as f64 - before as f64) / IDLE as f64)
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}
