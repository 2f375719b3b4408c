//! HTTP at Layer 7 with real peers: nginx in a network namespace (HTTP/2 and HTTP/1.1 over TLS of
//! its own CA, plain HTTP), curl, Python requests and raw bytes in intercepted jobs. What reached
//! the server is read from nginx's access log, never from the gateway's word.

use std::{fs, path::PathBuf, process::Output, time::Duration};

use anyhow::{Context as _, Result, ensure};
use gateway_e2e::{
    Daemon, DaemonConfig, Netns, TempDir,
    http::{HOST, MISBEHAVING_WEBSOCKET_PORT, Nginx},
    httpraw_bin, unique_id, wait_until, ws2_bin,
};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

const RULES: &str = r#"
[[rules]]
name = "no-deletes"
action = "deny"
targets = ["api", "plain"]
unauthenticated = true
reason = "CI jobs do not delete through the API"
[rules.http]
methods = ["DELETE"]

[[rules]]
name = "admin-is-off-limits"
action = "deny"
targets = ["api", "plain"]
unauthenticated = true
[rules.http]
paths = ["/admin/*"]

[[rules]]
name = "deploys-need-approval"
action = "require_approval"
targets = ["api"]
unauthenticated = true
approvers = ["ops"]
[rules.http]
methods = ["POST"]
paths = ["/deploy"]

[[rules]]
name = "no-deleting-tools"
action = "deny"
targets = ["api"]
unauthenticated = true
reason = "agents do not delete through MCP"
[rules.http]
paths = ["/mcp"]
mcp_tools = ["delete_*"]

[[rules]]
name = "mcp-basics"
action = "allow"
targets = ["api"]
unauthenticated = true
[rules.http]
paths = ["/mcp"]
rpc_methods = ["initialize", "notifications/*", "tools/list", "tools/call"]

[[rules]]
name = "nothing-else-on-mcp"
action = "deny"
targets = ["api"]
unauthenticated = true
[rules.http]
paths = ["/mcp"]

[[rules]]
name = "locked-repos-are-read-only"
action = "deny"
targets = ["api"]
unauthenticated = true
reason = "locked.git is read-only for CI"
[rules.http]
paths = ["/git/locked.git/git-receive-pack"]

[[rules]]
name = "jobs-may-call-the-api"
action = "allow"
targets = ["api", "plain", "untrusted"]
unauthenticated = true

[[approvers]]
name = "ops"
unix_users = ["root"]
"#;

/// nginx in a namespace; a gateway with three targets for it: `api` (TLS terminated, the token
/// injected, verified upstream TLS), `plain` (HTTP both ways, no credential), `untrusted` (the
/// upstream's certificate from a CA the gateway does not trust).
struct Setup {
    daemon: Daemon,
    nginx: Nginx,
    token: String,
    /// The gateway's CA, as a runner image trusts it.
    gateway_ca: PathBuf,
    dir: TempDir,
    ns: Netns,
}

impl Setup {
    fn new() -> Result<Setup> {
        Setup::with("")
    }

    /// `gateway sessions export ID --format har` into the test's directory; the file's path.
    fn export_har(&self, id: &str) -> Result<PathBuf> {
        let path = self.dir.path().join(format!("session-{id}.har"));
        let exported = self.daemon.cli(&[
            "sessions",
            "export",
            id,
            "--format",
            "har",
            "-o",
            path.to_str().unwrap_or_default(),
        ]);
        ensure!(exported.status.success(), "{exported:?}");
        Ok(path)
    }

    /// The setup with more configuration (`[[masking]]` rules) after the rules; `@IP@`, `@CA@`
    /// and `@TOKEN_FILE@` in it stand for nginx's address, its CA file and the token's file.
    fn with(extra: &str) -> Result<Setup> {
        Setup::configured("", extra)
    }

    /// The setup with rules that go before the common ones.
    fn with_rules_first(rules: &str) -> Result<Setup> {
        Setup::configured(rules, "")
    }

    fn configured(first: &str, extra: &str) -> Result<Setup> {
        let id = unique_id();
        let dir = TempDir::new(&format!("http{id}"));
        let ns = Netns::new(&id)?;
        let nginx = Nginx::start(&ns, dir.path())?;
        // The one credential nginx accepts under /git/; the gateway injects it everywhere.
        let token = nginx.token.clone();
        let token_file = dir.path().join("token");
        fs::write(&token_file, format!("{token}\n"))?;
        let other_ca = gateway_e2e::pki::TestPki::new(dir.path(), "other")?;
        let body = format!(
            r#"
[[targets]]
name = "api"
protocol = "http"
address = "{ip}:443"
[targets.http]
tls = "terminate"
ca_file = "{ca}"
hosts = ["{HOST}", "*.svc.test"]
[targets.credentials]
token_file = "{token_file}"

[[targets]]
name = "plain"
protocol = "http"
address = "{ip}:80"
[targets.http]
hosts = ["{HOST}"]
header_timeout = "2s"

[[targets]]
name = "untrusted"
protocol = "http"
address = "{ip}:8443"
[targets.http]
tls = "terminate"
ca_file = "{other}"
hosts = ["{HOST}"]
[targets.credentials]
token_file = "{token_file}"
{first}{RULES}{extra}"#,
            ip = nginx.addr,
            ca = nginx.ca.display(),
            other = other_ca.ca.display(),
            token_file = token_file.display(),
            extra = extra
                .replace("@IP@", &nginx.addr.to_string())
                .replace("@CA@", &nginx.ca.display().to_string())
                .replace("@TOKEN_FILE@", &token_file.display().to_string()),
        );
        let daemon = Daemon::start(DaemonConfig {
            server: String::new(),
            body,
        })?;
        let gateway_ca = dir.path().join("gateway-ca.pem");
        fs::write(&gateway_ca, daemon.ca_pem()?)?;
        Ok(Setup {
            daemon,
            nginx,
            token,
            gateway_ca,
            dir,
            ns,
        })
    }

    /// curl in a job, for `https://api.test…` resolved to the namespace; `-w` appends the status.
    fn curl(&self, args: &[&str]) -> Output {
        let resolve = format!("{HOST}:443:{}", self.nginx.addr);
        let mut all = vec![
            "-sS",
            "--max-time",
            "60",
            "--cacert",
            self.gateway_ca.to_str().unwrap(),
            "--resolve",
            &resolve,
            "-w",
            "\n%{http_code} %{http_version}",
        ];
        all.extend(args);
        self.daemon.run_job(&[], "curl", &all)
    }

    /// A shell script in a job whose runner image took the documented trust step: the gateway's CA
    /// added to the system store (`update-ca-certificates`), and `api.test` resolving to the
    /// server (both bind-mounted in a mount namespace of the job's own, the host stays as it is).
    fn job_on_a_runner_image(&self, script: &str) -> Result<Output> {
        let bundle = self.dir.path().join("ca-certificates.crt");
        let system = fs::read("/etc/ssl/certs/ca-certificates.crt").unwrap_or_default();
        fs::write(&bundle, [system, fs::read(&self.gateway_ca)?].concat())?;
        let hosts = self.dir.path().join("hosts");
        fs::write(
            &hosts,
            format!("127.0.0.1 localhost\n{} {HOST}\n", self.nginx.addr),
        )?;
        // The image is prepared outside the job (a job may not mount), the job inherits it.
        let image = format!(
            "mount --bind {hosts} /etc/hosts\nmount --bind {bundle} /etc/ssl/certs/ca-certificates.crt\nexec \"$@\"",
            hosts = hosts.display(),
            bundle = bundle.display(),
        );
        let out = std::process::Command::new("unshare")
            .args(["--mount", "sh", "-ec", &image, "sh"])
            .arg(gateway_e2e::gateway_bin())
            .arg("--control-socket")
            .arg(&self.daemon.control_socket)
            .args(["run", "--", "sh", "-ec", script])
            .output()?;
        Ok(out)
    }

    /// Raw bytes to the plain target, from a job.
    fn raw(&self, request: &str) -> String {
        let addr = format!("{}:80", self.nginx.addr);
        let out = self.daemon.run_job(&[], httpraw_bin(), &[&addr, request]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn server_saw(&self) -> Vec<Value> {
        self.nginx.requests().unwrap_or_default()
    }

    fn http_sessions(&self) -> Result<Vec<Value>> {
        Ok(self
            .daemon
            .sessions()?
            .into_iter()
            .filter(|s| s["protocol"] == "http")
            .collect())
    }

    /// Every event of every HTTP session, of `kind`.
    fn events(&self, kind: &str) -> Result<Vec<Value>> {
        let mut out = Vec::new();
        for s in self.http_sessions()? {
            let shown = self.daemon.show_session(&s["id"])?;
            for e in shown["events"].as_array().cloned().unwrap_or_default() {
                if e["kind"] == kind {
                    out.push(e);
                }
            }
        }
        Ok(out)
    }
}

/// Body and the `-w` status line of a curl run.
fn split(out: &Output) -> (String, String) {
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    match text.rsplit_once('\n') {
        Some((body, status)) => (body.to_string(), status.to_string()),
        None => (String::new(), text),
    }
}

/// Runs a python3 script as a job; what it printed, as the one JSON value it prints.
fn python_job(daemon: &Daemon, script: &str) -> Result<Value> {
    let out = daemon.run_job(&[], "/usr/bin/python3", &["-c", script]);
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "python: {} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn curl_gets_the_token_injected_over_terminated_tls_and_never_sees_it() -> Result<()> {
    let s = Setup::new()?;
    for version in ["--http2", "--http1.1"] {
        let out = s.curl(&[
            version,
            "-H",
            "Authorization: Bearer the-jobs-own-token",
            &format!("https://{HOST}/whoami"),
        ]);
        let (body, status) = split(&out);
        ensure!(
            status.starts_with("200"),
            "{version}: {status} {body} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let expected_version = if version == "--http2" {
            "200 2"
        } else {
            "200 1.1"
        };
        ensure!(status == expected_version, "{version}: {status}");
        // The server echoes the Authorization header; the job reads it masked.
        ensure!(
            !body.contains(&s.token),
            "the token came back to the job: {body}"
        );
        ensure!(body.starts_with("auth=*****"), "{body}");
        ensure!(!body.contains("the-jobs-own-token"), "{body}");
    }
    let seen = s.server_saw();
    ensure!(seen.len() == 2, "{seen:?}");
    for r in &seen {
        ensure!(r["auth"] == format!("Bearer {}", s.token), "{r}");
        ensure!(r["uri"] == "/whoami" && r["host"] == HOST, "{r}");
    }
    Ok(())
}

#[test]
fn denied_requests_get_a_problem_document_and_never_reach_the_server() -> Result<()> {
    let s = Setup::new()?;
    let out = s.curl(&["-X", "DELETE", &format!("https://{HOST}/items/1")]);
    let (body, status) = split(&out);
    ensure!(status.starts_with("403"), "{status} {body}");
    let problem: Value = serde_json::from_str(&body).context("problem document")?;
    ensure!(problem["rule"] == "no-deletes", "{problem}");
    ensure!(
        problem["detail"] == "CI jobs do not delete through the API",
        "{problem}"
    );
    ensure!(
        problem["status"] == 403 && problem["target"] == "api",
        "{problem}"
    );
    let out = s.curl(&["-i", &format!("https://{HOST}/admin/users")]);
    let (head, _) = split(&out);
    ensure!(
        head.to_ascii_lowercase()
            .contains("content-type: application/problem+json"),
        "{head}"
    );
    ensure!(head.starts_with("HTTP/2 403"), "{head}");
    // The path as the server would resolve it is what the rule sees.
    for path in [
        "/x/../admin/users",
        "/%61dmin/users",
        "/x/%2e%2e/admin/users",
    ] {
        let out = s.curl(&["--path-as-is", &format!("https://{HOST}{path}")]);
        let (body, status) = split(&out);
        ensure!(
            status.starts_with("403") || status.starts_with("400"),
            "{path}: {status} {body}"
        );
    }
    let seen = s.server_saw();
    ensure!(seen.is_empty(), "the server saw {seen:?}");
    // Allowed requests still go through on the same rules.
    let (_, status) = split(&s.curl(&[&format!("https://{HOST}/items/1")]));
    ensure!(status.starts_with("200"), "{status}");
    let recorded = s.events("http_request")?;
    let decisions: Vec<&str> = recorded
        .iter()
        .filter_map(|e| e["detail"]["decision"].as_str())
        .collect();
    ensure!(
        decisions.iter().filter(|d| **d == "deny").count() == 3 && decisions.contains(&"allow"),
        "{recorded:?}"
    );
    Ok(())
}

#[test]
fn requests_that_could_be_read_two_ways_are_refused_and_never_reach_the_server() -> Result<()> {
    let s = Setup::new()?;
    let host = format!("Host: {HOST}\\r\\n");
    let cases: Vec<(&str, String)> = vec![
        (
            "CL.TE smuggling",
            format!(
                "POST /items HTTP/1.1\\r\\n{host}Content-Length: 44\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n0\\r\\n\\r\\nDELETE /items/1 HTTP/1.1\\r\\n{host}\\r\\n"
            ),
        ),
        (
            "TE.CL smuggling",
            format!(
                "POST /items HTTP/1.1\\r\\n{host}Transfer-Encoding: chunked\\r\\nContent-Length: 4\\r\\n\\r\\n2e\\r\\nDELETE /admin/x HTTP/1.1\\r\\n{host}\\r\\n\\r\\n0\\r\\n\\r\\n"
            ),
        ),
        (
            "two lengths",
            format!(
                "POST /items HTTP/1.1\\r\\n{host}Content-Length: 0\\r\\nContent-Length: 30\\r\\n\\r\\nDELETE /items/1 HTTP/1.1\\r\\n\\r\\n"
            ),
        ),
        (
            "obfuscated transfer coding",
            format!(
                "POST /items HTTP/1.1\\r\\n{host}Transfer-Encoding: xchunked\\r\\n\\r\\n0\\r\\n\\r\\n"
            ),
        ),
        (
            "space before the colon",
            format!(
                "POST /items HTTP/1.1\\r\\n{host}Transfer-Encoding : chunked\\r\\n\\r\\n0\\r\\n\\r\\n"
            ),
        ),
        (
            "folded header",
            format!("GET /items HTTP/1.1\\r\\n{host}X-Note: a\\r\\n b\\r\\n\\r\\n"),
        ),
        (
            "dot segments",
            format!("GET /public/../admin/users HTTP/1.1\\r\\n{host}\\r\\n"),
        ),
        (
            "encoded dot segments",
            format!("GET /public/%2e%2e/admin/users HTTP/1.1\\r\\n{host}\\r\\n"),
        ),
        (
            "empty segment",
            format!("GET //admin/users HTTP/1.1\\r\\n{host}\\r\\n"),
        ),
        (
            "encoded slash",
            format!("GET /admin%2fusers HTTP/1.1\\r\\n{host}\\r\\n"),
        ),
        (
            "method override",
            format!(
                "POST /items/1 HTTP/1.1\\r\\n{host}X-HTTP-Method-Override: DELETE\\r\\nContent-Length: 0\\r\\n\\r\\n"
            ),
        ),
        (
            "two hosts",
            format!("GET /items HTTP/1.1\\r\\n{host}Host: evil.test\\r\\n\\r\\n"),
        ),
        (
            "absolute target for another host",
            format!("GET http://evil.test/items HTTP/1.1\\r\\n{host}\\r\\n"),
        ),
        (
            "h2c upgrade",
            format!(
                "GET /items HTTP/1.1\\r\\n{host}Connection: Upgrade, HTTP2-Settings\\r\\nUpgrade: h2c\\r\\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\\r\\n\\r\\n"
            ),
        ),
        ("echo", format!("TRACE /items HTTP/1.1\\r\\n{host}\\r\\n")),
        (
            "lower-case method",
            format!("delete /items/1 HTTP/1.1\\r\\n{host}\\r\\n"),
        ),
    ];
    for (name, request) in &cases {
        let response = s.raw(request);
        let status = response
            .lines()
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("");
        if name.ends_with("smuggling") {
            // Content-Length and Transfer-Encoding both: the request is read by its
            // Transfer-Encoding alone and the connection closes after the one response
            // (RFC 9112 §6.1), so what hides behind it is never read as a request.
            ensure!(
                response.matches("HTTP/1.1 ").count() <= 1
                    && (response.is_empty() || response.contains("connection: close")),
                "{name}: {response}"
            );
        } else {
            ensure!(
                matches!(status, "400" | "403" | "405" | "421" | "501"),
                "{name}: {response}"
            );
        }
        let seen = s.server_saw();
        ensure!(
            seen.iter().all(|r| r["method"] != "DELETE"
                && !r["uri"].as_str().unwrap_or("").contains("admin")
                && r["host"] == HOST
                && r["override"] == ""),
            "{name}: the server saw {seen:?}"
        );
    }
    // Pipelined requests are each decided: the first goes through, the second is denied.
    let response = s.raw(&format!(
        "GET /ok HTTP/1.1\\r\\n{host}\\r\\nDELETE /items/1 HTTP/1.1\\r\\n{host}\\r\\n"
    ));
    ensure!(
        response.starts_with("HTTP/1.1 200") && response.contains("HTTP/1.1 403"),
        "{response}"
    );
    let seen = s.server_saw();
    ensure!(
        seen.iter().all(|r| r["method"] != "DELETE"),
        "the server saw {seen:?}"
    );
    ensure!(seen.iter().any(|r| r["uri"] == "/ok"), "{seen:?}");
    Ok(())
}

#[test]
fn a_request_needing_approval_waits_for_a_person() -> Result<()> {
    let s = Setup::new()?;
    let url = format!("https://{HOST}/deploy?env=prod");
    let operation = format!("POST {HOST}/deploy?env=prod");
    for (verdict, expected) in [("approve", "200"), ("deny", "403")] {
        let (out, ()) = std::thread::scope(|scope| -> Result<(Output, ())> {
            let job = scope.spawn(|| s.curl(&["-X", "POST", "--data", "version=42", &url]));
            let id = pending(&s, &operation)?;
            let decided = s.daemon.cli(&["approvals", verdict, &id]);
            ensure!(decided.status.success(), "{decided:?}");
            Ok((job.join().expect("curl thread"), ()))
        })?;
        let (body, status) = split(&out);
        ensure!(status.starts_with(expected), "{verdict}: {status} {body}");
    }
    let seen = s.server_saw();
    ensure!(
        seen.iter().filter(|r| r["method"] == "POST").count() == 1,
        "{seen:?}"
    );
    // Approvers saw the request with its body.
    let list = s.daemon.cli_json(&["approvals", "list", "--json"])?;
    let shown = list
        .as_array()
        .and_then(|l| l.iter().find(|a| a["operation"] == operation))
        .context("approval listed")?;
    ensure!(
        shown.to_string().contains("version=42"),
        "the approver did not see the body: {shown}"
    );
    Ok(())
}

fn pending(s: &Setup, operation: &str) -> Result<String> {
    let mut id = None;
    let found = wait_until(Duration::from_secs(30), || {
        id = s
            .daemon
            .cli_json(&["approvals", "list", "--json"])
            .ok()
            .and_then(|l| l.as_array().cloned())
            .unwrap_or_default()
            .into_iter()
            .find(|a| a["operation"] == operation && a["status"] == "pending")
            .and_then(|a| a["id"].as_str().map(str::to_string));
        id.is_some()
    });
    ensure!(found, "no pending approval for {operation}");
    Ok(id.unwrap_or_default())
}

#[test]
fn python_requests_works_through_the_gateway_and_everything_is_recorded() -> Result<()> {
    let s = Setup::new()?;
    s.nginx.put_file("report.json", br#"{"rows": [1, 2, 3]}"#)?;
    let script = format!(
        r#"
import json, requests
s = requests.Session()
r = s.get("https://{ip}/files/report.json", headers={{"Host": "{HOST}"}}, verify="{ca}")
d = s.delete("https://{ip}/items/9", headers={{"Host": "{HOST}"}}, verify="{ca}")
print(json.dumps({{"status": r.status_code, "body": r.text, "denied": d.status_code, "type": d.headers.get("content-type")}}))
"#,
        ip = s.nginx.addr,
        ca = s.gateway_ca.display(),
    );
    let result = python_job(&s.daemon, &script)?;
    ensure!(result["status"] == 200, "{result}");
    ensure!(result["body"] == r#"{"rows": [1, 2, 3]}"#, "{result}");
    ensure!(result["denied"] == 403, "{result}");
    ensure!(result["type"] == "application/problem+json", "{result}");
    // The recording: the request before it went out (with the credential hidden), the response
    // with the digest of exactly what the job received.
    let requests = s.events("http_request")?;
    let get = requests
        .iter()
        .find(|e| e["detail"]["path"] == "/files/report.json")
        .context("request recorded")?;
    ensure!(get["detail"]["credential"] == true, "{get}");
    ensure!(!get.to_string().contains(&s.token), "{get}");
    let responses = s.events("http_response")?;
    let response = responses
        .iter()
        .find(|e| {
            e["detail"]["request"] == get["detail"]["request"] && e["detail"]["status"] == 200
        })
        .context("response recorded")?;
    let digest: String = Sha256::digest(br#"{"rows": [1, 2, 3]}"#)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    ensure!(response["detail"]["sha256"] == digest, "{response}");
    ensure!(response["detail"]["end"] == "complete", "{response}");
    let _ = &s.dir;
    Ok(())
}

#[test]
fn the_credential_goes_only_to_an_upstream_the_gateway_authenticates() -> Result<()> {
    let s = Setup::new()?;
    // nginx's certificate is not from the CA the `untrusted` target names.
    let resolve = format!("{HOST}:8443:{}", s.nginx.addr);
    let out = s.daemon.run_job(
        &[],
        "curl",
        &[
            "-sS",
            "--cacert",
            s.gateway_ca.to_str().unwrap(),
            "--resolve",
            &resolve,
            "-w",
            "\n%{http_code}",
            &format!("https://{HOST}:8443/whoami"),
        ],
    );
    let (body, status) = split(&out);
    ensure!(status == "502", "{status} {body}");
    ensure!(s.server_saw().is_empty(), "{:?}", s.server_saw());
    // A host the target does not serve is refused before anything leaves.
    let out = s.curl(&[
        "-H",
        "Host: other.svc.test",
        &format!("https://{HOST}/whoami"),
    ]);
    let (body, status) = split(&out);
    ensure!(status.starts_with("421"), "{status} {body}");
    let evil = format!("evil.test:443:{}", s.nginx.addr);
    let out = s.curl(&["-k", "--resolve", &evil, "https://evil.test/whoami"]);
    ensure!(!out.status.success(), "{out:?}");
    ensure!(s.server_saw().is_empty(), "{:?}", s.server_saw());
    Ok(())
}

#[test]
fn malformed_oversized_and_flooding_requests_get_clear_errors_at_bounded_cost() -> Result<()> {
    let s = Setup::new()?;
    let host = format!("Host: {HOST}\\r\\n");
    let many: String = (0..150).map(|i| format!("X-N{i}: v\\r\\n")).collect();
    let huge = format!("X-Big: {}\\r\\n", "a".repeat(70_000));
    for (name, request, expected) in [
        (
            "too many headers",
            format!("GET /items HTTP/1.1\\r\\n{host}{many}\\r\\n"),
            "431",
        ),
        (
            "header block too large",
            format!("GET /items HTTP/1.1\\r\\n{host}{huge}\\r\\n"),
            "431",
        ),
        (
            "bad chunk size",
            format!(
                "POST /items HTTP/1.1\\r\\n{host}Transfer-Encoding: chunked\\r\\n\\r\\nzz\\r\\nabc\\r\\n0\\r\\n\\r\\n"
            ),
            "400",
        ),
        ("not HTTP", "HELLO\\r\\n\\r\\n".to_string(), "400"),
    ] {
        let response = s.raw(&request);
        let status = response
            .lines()
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("");
        ensure!(status == expected, "{name}: {response:?}");
    }
    // The bad chunk reached the server as a request whose body broke: nothing but the refusal.
    ensure!(
        s.server_saw()
            .iter()
            .all(|r| r["method"] != "POST" || r["status"] != 200),
        "{:?}",
        s.server_saw()
    );
    // Bare LF line ends: one request, read the one way, forwarded framed properly.
    let response = s.raw(&format!("GET /lf HTTP/1.1\\nHost: {HOST}\\n\\n"));
    ensure!(response.starts_with("HTTP/1.1 200"), "{response}");
    // A ClientHello that is garbage: the connection ends, the attempt is recorded.
    let out = s.daemon.run_job(
        &[],
        httpraw_bin(),
        &[
            &format!("{}:443", s.nginx.addr),
            "\\x16\\x03\\x01garbage\\r\\n",
        ],
    );
    // Only a TLS alert record (0x15) comes back, if anything.
    ensure!(out.stdout.is_empty() || out.stdout[0] == 0x15, "{out:?}");
    let broken = wait_until(Duration::from_secs(10), || {
        s.events("protocol_error")
            .unwrap_or_default()
            .iter()
            .any(|e| e["detail"]["phase"] == "client_tls")
    });
    ensure!(
        broken,
        "no protocol_error recorded for the garbage ClientHello"
    );
    // HTTP/2 rapid reset: the gateway stops the connection instead of serving the flood.
    let flood = |mode: &str, count: &str| -> Result<Value> {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/peers/http/h2flood.py");
        let out = s.daemon.run_job(
            &[],
            "/usr/bin/python3",
            &[
                script,
                &s.nginx.addr.to_string(),
                "443",
                s.gateway_ca.to_str().unwrap(),
                HOST,
                mode,
                count,
            ],
        );
        serde_json::from_slice(&out.stdout)
            .with_context(|| format!("h2flood {mode}: {}", String::from_utf8_lossy(&out.stderr)))
    };
    let before = s.server_saw().len();
    let reset = flood("rapid-reset", "2000")?;
    // GOAWAY with ENHANCE_YOUR_CALM (0xb).
    ensure!(reset["goaway"] == 11, "rapid reset was served: {reset}");
    let served = s.server_saw().len() - before;
    ensure!(
        served < 200,
        "the upstream got {served} requests of the flood"
    );
    // CONTINUATION flood: a header block that never ends is cut off at the header limit.
    let continuation = flood("continuation", "2000")?;
    ensure!(continuation["goaway"] == 11, "{continuation}");
    ensure!(
        continuation["sent_frames"].as_u64().unwrap_or(0) < 2000,
        "the gateway read 32 MB of one header block: {continuation}"
    );
    Ok(())
}

#[test]
fn every_documented_client_works_with_exactly_its_trust_step() -> Result<()> {
    let s = Setup::new()?;
    s.nginx.put_file("report.json", br#"{"rows": [1, 2, 3]}"#)?;
    let url = format!("https://{HOST}/whoami");
    let out = s.job_on_a_runner_image(&format!(
        r#"
curl -sS --fail https://{HOST}/files/report.json; echo
curl -sS --fail --http2 -w 'curl-h2 %{{http_version}}\n' {url}
REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt /usr/bin/python3 -c 'import requests; r = requests.get("{url}"); print("requests", r.status_code, r.text.strip())'
SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt /usr/bin/python3 -c 'import httpx; r = httpx.Client(http2=True).get("{url}"); print("httpx", r.http_version, r.status_code, r.text.strip())'
NODE_EXTRA_CA_CERTS={ca} node -e 'fetch("{url}").then(async r => console.log("node", r.status, (await r.text()).trim()))'
"#,
        ca = s.gateway_ca.display(),
    ))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    ensure!(lines.first() == Some(&r#"{"rows": [1, 2, 3]}"#), "{stdout}");
    // Every client got the server's answer with the injected token masked, over HTTP/2 where it
    // asked for it.
    let masked = format!("auth={}", "*".repeat(format!("Bearer {}", s.token).len()));
    ensure!(lines.contains(&"curl-h2 2"), "{stdout}");
    ensure!(
        lines.contains(&format!("{masked} key=").as_str()),
        "{stdout}"
    );
    for expected in [
        format!("requests 200 {masked}"),
        format!("httpx HTTP/2 200 {masked}"),
        format!("node 200 {masked}"),
    ] {
        ensure!(
            lines.iter().any(|l| l.starts_with(&expected)),
            "no line {expected:?} in {stdout}"
        );
    }
    ensure!(!stdout.contains(&s.token), "{stdout}");
    let seen = s.server_saw();
    ensure!(seen.len() == 5, "{seen:?}");
    for r in &seen {
        ensure!(r["auth"] == format!("Bearer {}", s.token), "{r}");
    }
    Ok(())
}

#[test]
fn git_clones_and_pushes_over_https_with_the_injected_credential_and_push_rules_hold() -> Result<()>
{
    let s = Setup::new()?;
    let app = s.nginx.git_repository("app")?;
    let locked = s.nginx.git_repository("locked")?;
    let home = s.dir.path().join("job-home");
    fs::create_dir_all(&home)?;
    let out = s.job_on_a_runner_image(&format!(
        r#"
export HOME={home} GIT_TERMINAL_PROMPT=0
cd $HOME
git config --global user.name agent
git config --global user.email agent@test
git clone -q https://{HOST}/git/app.git app
cd app && echo change > file && git add file && git commit -qm 'agent change' && git push -q origin main && cd ..
git clone -q https://{HOST}/git/locked.git locked
cd locked && echo change > file && git add file && git commit -qm 'agent change'
if git push -q origin main 2> ../push.err; then echo PUSHED-LOCKED; fi
cat ../push.err
"#,
        home = home.display(),
    ))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success(),
        "{stdout}{stderr}\nserver saw {:?}\nrecorded {:?}",
        s.server_saw(),
        s.events("http_request")
    );
    // What the server holds, read from its repositories: the push to app landed, locked is as
    // it was.
    let head = |repo: &std::path::Path| -> Result<String> {
        let out = std::process::Command::new("git")
            .arg("--git-dir")
            .arg(repo)
            .args(["log", "-1", "--format=%s", "main"])
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    ensure!(
        head(&app)? == "agent change",
        "{stdout}{stderr}\nserver saw {:?}\nrecorded {:?}",
        s.server_saw(),
        s.events("http_request")
    );
    ensure!(head(&locked)? == "seed", "{stdout}{stderr}");
    ensure!(!stdout.contains("PUSHED-LOCKED"), "{stdout}");
    ensure!(stdout.contains("403"), "{stdout}");
    // The job never held the credential; every request the server got carried the gateway's.
    ensure!(!stdout.contains(&s.token) && !stderr.contains(&s.token));
    let config = fs::read_to_string(home.join(".gitconfig"))?;
    ensure!(!config.contains("credential"), "{config}");
    let seen = s.server_saw();
    ensure!(
        seen.iter()
            .any(|r| r["uri"] == "/git/app.git/git-receive-pack"),
        "{seen:?}"
    );
    for r in &seen {
        ensure!(r["auth"] == format!("Bearer {}", s.token), "{r}");
        ensure!(r["uri"] != "/git/locked.git/git-receive-pack", "{r}");
    }
    let denied = s
        .events("http_request")?
        .into_iter()
        .find(|e| e["detail"]["path"] == "/git/locked.git/git-receive-pack")
        .context("the refused push is recorded")?;
    ensure!(
        denied["detail"]["rule"] == "locked-repos-are-read-only",
        "{denied}"
    );
    Ok(())
}

#[test]
fn mcp_tool_calls_are_decided_by_tool_and_bodies_read_two_ways_are_refused() -> Result<()> {
    let s = Setup::new()?;
    let script = format!(
        r#"
import gzip, json, requests
def call(tool, **arguments):
    return {{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {{"name": tool, "arguments": arguments}}}}
cases = [
    ("get", json.dumps(call("get_issue", n=7)), {{}}),
    ("list", json.dumps({{"jsonrpc": "2.0", "id": 2, "method": "tools/list"}}), {{}}),
    ("delete", json.dumps(call("delete_repo", repo="app")), {{}}),
    ("batch", json.dumps([call("get_issue", n=1), call("delete_repo", repo="app")]), {{}}),
    ("other-method", json.dumps({{"jsonrpc": "2.0", "id": 3, "method": "resources/read"}}), {{}}),
    ("duplicate-name", '{{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{{"name":"get_issue","name":"delete_repo"}}}}', {{}}),
    ("gzip", gzip.compress(json.dumps(call("delete_repo")).encode()), {{"Content-Encoding": "gzip"}}),
    ("too-large", json.dumps(call("get_issue", pad="x" * (1100 * 1024))), {{}}),
    ("not-json", "name=delete_repo", {{}}),
]
s = requests.Session()
out = {{}}
for name, body, headers in cases:
    headers = dict(headers, Host="{HOST}")
    headers["Content-Type"] = "application/json"
    r = s.post("https://{ip}/mcp", data=body, headers=headers, verify="{ca}")
    out[name] = [r.status_code, r.headers.get("content-type")]
print(json.dumps(out))
"#,
        ip = s.nginx.addr,
        ca = s.gateway_ca.display(),
    );
    let result = python_job(&s.daemon, &script)?;
    for (case, status) in [
        ("get", 200),
        ("list", 200),
        ("delete", 403),
        ("batch", 403),
        ("other-method", 403),
        ("duplicate-name", 400),
        ("gzip", 415),
        ("too-large", 413),
        ("not-json", 400),
    ] {
        ensure!(result[case][0] == status, "{case}: {result}");
        if status != 200 {
            ensure!(
                result[case][1] == "application/problem+json",
                "{case}: {result}"
            );
        }
    }
    // Only the two allowed calls reached the server.
    let served = s
        .server_saw()
        .into_iter()
        .filter(|r| r["uri"] == "/mcp")
        .count();
    ensure!(served == 2, "{:?}", s.server_saw());
    // The recording names the tool and its arguments, and the rule that refused it.
    let requests = s.events("http_request")?;
    let delete = requests
        .iter()
        .find(|e| e["detail"]["rpc"][0]["tool"] == "delete_repo")
        .context("the delete_repo call is recorded")?;
    ensure!(delete["detail"]["rule"] == "no-deleting-tools", "{delete}");
    ensure!(
        delete["detail"]["rpc"][0]["arguments"]["repo"] == "app",
        "{delete}"
    );
    let refused = s.events("refused")?;
    ensure!(
        refused.iter().any(|e| e["detail"]["status"] == 400
            && e["detail"]["reason"]
                .as_str()
                .is_some_and(|r| r.contains("twice"))),
        "{refused:?}"
    );
    Ok(())
}

const MASKING: &str = r#"
[[masking]]
name = "customer-data"
targets = ["api", "plain"]
json_fields = ["ssn", "*token*", "users[*].card"]
detectors = ["email", "us_ssn", "aws_access_key"]
"#;

/// A JSON document with a value for each kind of rule: fields by name, by path, by glob, and
/// values only a detector finds.
const USERS: &str = r#"{"users":[{"name":"Alice","ssn":"123-45-6789","email":"alice@example.com","card":"4111 1111 1111 1111","note":"backup ssn 536-22-1234"}],"api_token":"opaque-Xq7RtZ9pLm2Vw","key":"AKIAIOSFODNN7EXAMPLE","status":"ok"}"#;

const SECRETS: &[&str] = &[
    "123-45-6789",
    "alice@example.com",
    "4111 1111 1111 1111",
    "536-22-1234",
    "opaque-Xq7RtZ9pLm2Vw",
    "AKIAIOSFODNN7EXAMPLE",
];

fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    let mut child = std::process::Command::new("gzip")
        .args(["-9", "-c", "-n"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut stdin = child.stdin.take().context("gzip stdin")?;
    let input = data.to_vec();
    let writer = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &input));
    let out = child.wait_with_output()?;
    writer.join().expect("gzip writer")?;
    ensure!(out.status.success(), "gzip failed");
    Ok(out.stdout)
}

fn no_secret(what: &str, text: &str) -> Result<()> {
    for secret in SECRETS {
        ensure!(
            !text.contains(secret),
            "{what}: {secret:?} reached the job: {text}"
        );
    }
    Ok(())
}

/// The masked document: every value a rule covers replaced, the rest as it was.
fn check_masked(what: &str, body: &str) -> Result<()> {
    no_secret(what, body)?;
    let doc: Value =
        serde_json::from_str(body).with_context(|| format!("{what}: not JSON: {body}"))?;
    let user = &doc["users"][0];
    ensure!(
        user["name"] == "Alice" && doc["status"] == "ok",
        "{what}: {doc}"
    );
    ensure!(
        user["ssn"] == "[masked]" && user["card"] == "[masked]" && doc["api_token"] == "[masked]",
        "{what}: {doc}"
    );
    ensure!(user["email"] == "[masked:email]", "{what}: {doc}");
    ensure!(
        user["note"] == "backup ssn [masked:us_ssn]",
        "{what}: {doc}"
    );
    ensure!(doc["key"] == "[masked:aws_access_key]", "{what}: {doc}");
    Ok(())
}

/// Headers (lower-cased) and body of a `curl -i` run whose status line `-w` appended.
fn head_and_body(out: &Output) -> (String, String, String) {
    let (text, status) = split(out);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .map(|(h, b)| (h.to_ascii_lowercase(), b.to_string()))
        .unwrap_or_default();
    (head, body, status)
}

#[test]
fn json_responses_are_masked_whatever_the_job_asks_for() -> Result<()> {
    let s = Setup::with(MASKING)?;
    s.nginx.put_file("users.json", USERS.as_bytes())?;
    // The same document pre-compressed: served to clients that accept gzip.
    s.nginx
        .put_file("users.json.gz", &gzip(USERS.as_bytes())?)?;
    let url = |path: &str| format!("https://{HOST}{path}");
    let cases: Vec<(&str, Vec<String>)> = vec![
        ("HTTP/2", vec!["--http2".into(), url("/files/users.json")]),
        (
            "HTTP/1.1",
            vec!["--http1.1".into(), url("/files/users.json")],
        ),
        (
            "gzip asked for",
            vec!["--compressed".into(), url("/files/users.json")],
        ),
        (
            "gzip forced",
            vec![
                "-H".into(),
                "Accept-Encoding: gzip".into(),
                url("/files/users.json"),
            ],
        ),
        (
            "a coding the gateway does not decode",
            vec![
                "-H".into(),
                "Accept-Encoding: compress, x-custom".into(),
                url("/files/users.json"),
            ],
        ),
        (
            "compressed on the fly",
            vec!["--compressed".into(), url("/gzip/users.json")],
        ),
    ];
    for (name, args) in &cases {
        let mut all = vec!["-i"];
        all.extend(args.iter().map(String::as_str));
        let out = s.curl(&all);
        let (head, body, status) = head_and_body(&out);
        ensure!(
            status.starts_with("200"),
            "{name}: {status} {head} {body} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        check_masked(name, &body)?;
        // The headers describe the masked body: no coding the job did not get, no byte ranges
        // of the upstream's bytes, no length of them.
        ensure!(!head.contains("content-encoding"), "{name}: {head}");
        ensure!(!head.contains("accept-ranges"), "{name}: {head}");
        if let Some(len) = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
        {
            ensure!(len.trim() == body.len().to_string(), "{name}: {head}");
        }
    }
    // Plain HTTP/1.1 both ways, the upstream compressing on the fly (chunked).
    let response = s.raw(&format!(
        "GET /gzip/users.json HTTP/1.1\\r\\nHost: {HOST}\\r\\nAccept-Encoding: gzip\\r\\nConnection: close\\r\\n\\r\\n"
    ));
    ensure!(response.starts_with("HTTP/1.1 200"), "{response}");
    no_secret("plain chunked", &response)?;
    ensure!(response.contains("[masked:email]"), "{response}");
    // The server was asked for codings the gateway decodes, whatever the job asked for, and
    // sent every body compressed.
    let seen = s.server_saw();
    ensure!(seen.len() == cases.len() + 1, "{seen:?}");
    ensure!(
        seen.iter()
            .all(|r| r["accept_encoding"] == "gzip, deflate, br, zstd"
                && r["content_encoding"] == "gzip"),
        "{seen:?}"
    );
    // The recording holds the masked bytes only.
    let responses = s.events("http_response")?;
    ensure!(responses.len() == cases.len() + 1, "{responses:?}");
    for r in &responses {
        no_secret("recording", &r.to_string())?;
        ensure!(r["detail"]["masked"].as_u64() == Some(6), "{r}");
    }
    Ok(())
}

#[test]
fn response_headers_and_recorded_request_bodies_are_masked() -> Result<()> {
    let s = Setup::with(MASKING)?;
    let url = |path: &str| format!("https://{HOST}{path}");
    let out = s.curl(&["-i", &url("/account")]);
    let (head, body, status) = head_and_body(&out);
    ensure!(status.starts_with("200"), "{status} {head} {body}");
    no_secret("response headers", &head)?;
    ensure!(head.contains("x-account-ssn: [masked:us_ssn]"), "{head}");
    // Framing headers stay as the upstream sent them.
    ensure!(head.contains("content-type: text/plain"), "{head}");
    // A request body with values the masking hides: the upstream gets it as the job sent it,
    // the recording only masked.
    let doc = r#"{"ssn":"123-45-6789","note":"reach me at alice@example.com"}"#;
    let out = s.curl(&[
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        doc,
        &url("/upload"),
    ]);
    let (text, status) = split(&out);
    ensure!(status.starts_with("200"), "{status} {text}");
    let seen = s.server_saw();
    ensure!(
        seen.iter()
            .any(|r| r["uri"] == "/upload" && r["body"] == doc),
        "{seen:?}"
    );
    // A tool call's arguments, as the gateway read them for the rules: recorded (and shown to
    // approvers) masked like the body they came from.
    let call = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_issue","arguments":{"ssn":"123-45-6789","contact":"alice@example.com"}}}"#;
    let out = s.curl(&[
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        call,
        &url("/mcp"),
    ]);
    let (text, status) = split(&out);
    ensure!(status.starts_with("200"), "{status} {text}");
    let requests = s.events("http_request")?;
    ensure!(
        requests.iter().any(|r| {
            let arguments = &r["detail"]["rpc"][0]["arguments"];
            r["detail"]["rpc"][0]["tool"] == "get_issue"
                && arguments["ssn"]
                    .as_str()
                    .is_some_and(|v| v.starts_with("[masked"))
                && arguments["contact"]
                    .as_str()
                    .is_some_and(|v| v.starts_with("[masked"))
        }),
        "{requests:?}"
    );
    let responses = s.events("http_response")?;
    for e in requests.iter().chain(&responses) {
        no_secret("recording", &e.to_string())?;
    }
    ensure!(
        requests.iter().any(|r| r["detail"]["body_sample"]
            .as_str()
            .is_some_and(|b| b.contains("[masked"))),
        "{requests:?}"
    );
    ensure!(
        responses.iter().any(
            |r| r["detail"]["headers"]["x-account-ssn"] == "[masked:us_ssn]"
                && r["detail"]["masked"].as_u64() == Some(1)
        ),
        "{responses:?}"
    );
    Ok(())
}

/// A request whose line, query and headers carry values the masking hides: `curl -K FILE`, so
/// that the values are not in the job's command line (which is recorded apart from the request).
fn curl_config(s: &Setup, name: &str, lines: &[String]) -> Result<Output> {
    let file = s.dir.path().join(name);
    fs::write(&file, lines.join("\n") + "\n")?;
    Ok(s.curl(&["-K", file.to_str().unwrap_or_default()]))
}

#[test]
fn the_request_line_query_and_headers_are_shown_masked_and_forwarded_unchanged() -> Result<()> {
    let s = Setup::with(MASKING)?;
    // nginx redirects a directory named without its slash: the Location carries the path.
    fs::create_dir_all(s.nginx.dir.join("www/files/123-45-6789"))?;
    let url = |path: &str| format!("url = \"https://{HOST}{path}\"");
    let debug = "header = \"X-Debug: alice@example.com\"".to_string();
    // Allowed: the secret in the query (once as typed, once percent-encoded) and in a header.
    let query = "/v1/users?ssn=123-45-6789&contact=alice%40example.com";
    let out = curl_config(&s, "allowed", &[url(query), debug.clone()])?;
    let (body, status) = split(&out);
    ensure!(status.starts_with("200"), "{status} {body}");
    // In the path; denied by a rule without a reason of its own (the default names the request);
    // refused before policy (dot segments); redirected.
    let cases = [
        ("path", "/v1/users/123-45-6789/profile", "200"),
        ("denied", "/admin/alice@example.com", "403"),
        ("refused", "/x/../123-45-6789", "400"),
        ("redirected", "/files/123-45-6789", "301"),
    ];
    for (name, path, expected) in cases {
        let out = curl_config(&s, name, &[url(path), debug.clone(), "path-as-is".into()])?;
        let (body, status) = split(&out);
        ensure!(status.starts_with(expected), "{name}: {status} {body}");
        if expected.starts_with('4') {
            // What the gateway answers does not repeat what the masking hides either.
            no_secret(name, &body)?;
            ensure!(body.contains("[masked:"), "{name}: {body}");
        }
    }
    // Held for approval: what the approver reads is masked; the job's own credential is not shown.
    let operation = format!("POST {HOST}/deploy?ticket=[masked:us_ssn]");
    let (out, shown) = std::thread::scope(|scope| -> Result<(Output, String)> {
        let job = scope.spawn(|| {
            curl_config(
                &s,
                "held",
                &[
                    url("/deploy?ticket=123-45-6789"),
                    debug.clone(),
                    "header = \"Authorization: Bearer the-jobs-own-token\"".into(),
                    "data = \"version=42\"".into(),
                ],
            )
        });
        let id = pending(&s, &operation)?;
        let list = s.daemon.cli(&["approvals", "list", "--json"]);
        let show = s.daemon.cli(&["approvals", "show", &id]);
        let show_json = s.daemon.cli(&["approvals", "show", &id, "--json"]);
        let decided = s.daemon.cli(&["approvals", "approve", &id]);
        ensure!(decided.status.success(), "{decided:?}");
        let shown = [list, show, show_json]
            .iter()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .collect::<Vec<_>>()
            .join("\n");
        Ok((job.join().expect("curl thread")?, shown))
    })?;
    let (body, status) = split(&out);
    ensure!(status.starts_with("200"), "approved: {status} {body}");
    no_secret("approval", &shown)?;
    ensure!(
        !shown.contains("alice%40") && !shown.contains("the-jobs-own-token"),
        "approval: {shown}"
    );
    ensure!(!shown.contains(&s.token), "approval: {shown}");
    ensure!(
        shown.contains("[masked:email]") && shown.contains("version=42"),
        "approval: {shown}"
    );
    // The upstream got every forwarded request as the job sent it.
    let seen = s.server_saw();
    for uri in [
        query,
        "/v1/users/123-45-6789/profile",
        "/files/123-45-6789",
        "/deploy?ticket=123-45-6789",
    ] {
        ensure!(
            seen.iter()
                .any(|r| r["uri"] == uri && r["debug"] == "alice@example.com"),
            "{uri}: {seen:?}"
        );
    }
    ensure!(
        seen.iter().all(|r| !r["uri"]
            .as_str()
            .is_some_and(|u| u.contains("admin") || u.contains(".."))),
        "{seen:?}"
    );
    // Every view of the recording: the events, `sessions show`, the HAR export.
    let complete = wait_until(Duration::from_secs(10), || {
        s.events("http_response").is_ok_and(|r| r.len() == 4)
    });
    ensure!(complete, "{:?}", s.events("http_response"));
    let mut views = Vec::new();
    for session in s.http_sessions()? {
        let id = session["id"].to_string();
        let events = s.daemon.show_session(&id)?["events"].to_string();
        let shown = s.daemon.cli(&["sessions", "show", &id]);
        let har_path = s.export_har(&id)?;
        views.push(events);
        views.push(String::from_utf8_lossy(&shown.stdout).into_owned());
        views.push(fs::read_to_string(&har_path)?);
    }
    let all = views.join("\n");
    no_secret("recording", &all)?;
    // What the gateway shows of the request, the encoded form too (a text body echoing it is
    // masked as text, as it is: see the threat model).
    let request_side: Vec<Value> = ["http_request", "refused", "http_approval"]
        .iter()
        .map(|kind| s.events(kind))
        .collect::<Result<Vec<_>>>()?
        .concat();
    let har_and_log = views
        .iter()
        .skip(1)
        .step_by(3)
        .chain(views.iter().skip(2).step_by(3))
        .cloned()
        .collect::<Vec<_>>()
        .join("\n");
    for text in [serde_json::to_string(&request_side)?, har_and_log] {
        ensure!(!text.contains("alice%40"), "{text}");
    }
    ensure!(
        !all.contains("the-jobs-own-token") && !all.contains(&s.token),
        "{all}"
    );
    let requests = s.events("http_request")?;
    let allowed = requests
        .iter()
        .find(|e| e["detail"]["path"] == "/v1/users")
        .context("the allowed request is recorded")?;
    let d = &allowed["detail"];
    ensure!(
        d["target"] == "/v1/users?ssn=[masked:us_ssn]&contact=%5Bmasked%3Aemail%5D"
            && d["query"]
                == serde_json::json!([["ssn", "[masked:us_ssn]"], ["contact", "[masked:email]"]])
            && d["headers"]["x-debug"] == "[masked:email]",
        "{allowed}"
    );
    let refused = s.events("refused")?;
    ensure!(
        refused.iter().any(|e| e["detail"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("[masked:us_ssn]"))),
        "{refused:?}"
    );
    let responses = s.events("http_response")?;
    ensure!(
        responses.iter().any(|e| e["detail"]["status"] == 301
            && e["detail"]["headers"]["location"]
                .as_str()
                .is_some_and(|l| l.contains("[masked:us_ssn]"))),
        "{responses:?}"
    );
    Ok(())
}

#[test]
fn a_range_request_cannot_cut_a_value_out_of_the_masking() -> Result<()> {
    let s = Setup::with(MASKING)?;
    s.nginx.put_file("users.json", USERS.as_bytes())?;
    // The bytes of the token alone: no field name left for the masking to see.
    let at = USERS.find("opaque-").context("token")?;
    let range = format!("{at}-{}", at + "opaque-Xq7RtZ9pLm2Vw".len() - 1);
    // nginx's strong ETag for the file, as a client that fetched it before would send it.
    let meta = fs::metadata(s.nginx.dir.join("www/files/users.json"))?;
    let mtime = meta
        .modified()?
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let etag = format!("\"{mtime:x}-{:x}\"", meta.len());
    for (name, extra) in [
        ("Range", vec!["-r".to_string(), range.clone()]),
        (
            "If-Range",
            vec![
                "-r".to_string(),
                range.clone(),
                "-H".to_string(),
                format!("If-Range: {etag}"),
            ],
        ),
        (
            "several ranges",
            vec!["-r".to_string(), format!("0-10,{range}")],
        ),
    ] {
        for version in ["--http2", "--http1.1"] {
            let mut args = vec![version];
            args.extend(extra.iter().map(String::as_str));
            let url = format!("https://{HOST}/files/users.json");
            args.push(&url);
            let out = s.curl(&args);
            let (body, status) = split(&out);
            no_secret(name, &body)?;
            // The whole document, masked, instead of the part.
            ensure!(
                status.starts_with("200"),
                "{name} {version}: {status} {body}"
            );
            check_masked(name, &body)?;
        }
    }
    let seen = s.server_saw();
    ensure!(
        seen.iter().all(|r| r["range"] == "" && r["status"] != 206),
        "{seen:?}"
    );
    Ok(())
}

#[test]
fn responses_the_masking_cannot_read_are_refused_never_passed_on() -> Result<()> {
    let s = Setup::with(MASKING)?;
    s.nginx.put_file("users.json", USERS.as_bytes())?;
    // Text in a binary type: the detectors would not read it.
    s.nginx.put_file("photo.png", USERS.as_bytes())?;
    // 64 MiB of JSON whitespace in 64 KiB.
    let mut bomb = b"[".to_vec();
    bomb.extend(std::iter::repeat_n(b' ', 64 << 20));
    s.nginx.put_file("bomb.json.gz", &gzip(&bomb)?)?;
    s.nginx.put_file("bomb.json", b"[]")?;
    for (name, path, reason) in [
        (
            "an unknown content coding",
            "/odd/users.json",
            "content coding \"compress\"",
        ),
        (
            "a type the masking cannot read",
            "/files/photo.png",
            "image/png",
        ),
        (
            "a decompression bomb",
            "/files/bomb.json",
            "decompression bomb",
        ),
    ] {
        for version in ["--http2", "--http1.1"] {
            let out = s.curl(&["-i", version, &format!("https://{HOST}{path}")]);
            let (head, body, status) = head_and_body(&out);
            no_secret(name, &body)?;
            ensure!(
                status.starts_with("502"),
                "{name} {version}: {status} {head} {body}"
            );
            ensure!(
                head.contains("content-type: application/problem+json"),
                "{name}: {head}"
            );
            let problem: Value = serde_json::from_str(&body).context("problem document")?;
            ensure!(
                problem["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains(reason)),
                "{name}: {problem}"
            );
        }
    }
    let refused: Vec<Value> = s
        .events("http_response")?
        .into_iter()
        .filter(|e| e["detail"]["status"] == 502)
        .collect();
    ensure!(refused.len() == 6, "{refused:?}");
    for e in &refused {
        no_secret("recording", &e.to_string())?;
        ensure!(e["detail"]["refused"].as_str().is_some(), "{e}");
        ensure!(e["detail"]["upstream_status"] == 200, "{e}");
    }
    // A body that is readable still goes through on the same connection settings.
    let (body, status) = split(&s.curl(&[&format!("https://{HOST}/files/users.json")]));
    ensure!(status.starts_with("200"), "{status}");
    check_masked("after refusals", &body)?;
    Ok(())
}

#[test]
fn event_streams_are_masked_event_by_event() -> Result<()> {
    let s = Setup::with(MASKING)?;
    let stream =
        format!("event: user\ndata: {USERS}\n\nevent: note\ndata: mail alice@example.com\n\n");
    s.nginx.put_file("events.sse", stream.as_bytes())?;
    for path in ["/files/events.sse", "/gzip/events.sse"] {
        let out = s.curl(&["--compressed", &format!("https://{HOST}{path}")]);
        let (body, status) = split(&out);
        ensure!(status.starts_with("200"), "{path}: {status} {body}");
        no_secret(path, &body)?;
        let events: Vec<&str> = body.split("\n\n").filter(|e| !e.is_empty()).collect();
        ensure!(events.len() == 2, "{path}: {body}");
        let data = events[0]
            .lines()
            .find_map(|l| l.strip_prefix("data: "))
            .context("data line")?;
        check_masked(path, data)?;
        ensure!(
            events[1] == "event: note\ndata: mail [masked:email]",
            "{path}: {body}"
        );
    }
    Ok(())
}

#[test]
fn a_body_the_masking_fails_on_midway_is_cut_never_passed_on() -> Result<()> {
    let s = Setup::with(MASKING)?;
    // More than the gateway reads before the headers go out, then JSON the masking cannot
    // read, then a value only a json_fields rule would mask.
    let pad = "lorem ipsum ".repeat(30_000);
    let body = format!(r#"{{"pad":"{pad}","x": nope, "api_token":"opaque-Xq7RtZ9pLm2Vw"}}"#);
    s.nginx.put_file("broken.json", body.as_bytes())?;
    for version in ["--http2", "--http1.1"] {
        let out = s.curl(&[version, &format!("https://{HOST}/files/broken.json")]);
        let (text, status) = split(&out);
        no_secret(version, &text)?;
        // The job sees the headers and the masked beginning, then a transfer that fails; on
        // HTTP/2 the reset may also overtake the headers still queued (no status at all).
        ensure!(
            status.starts_with("200") || status.starts_with("000"),
            "{version}: {status}"
        );
        ensure!(
            status.starts_with("000") || text.starts_with(r#"{"pad":"lorem ipsum"#),
            "{version}"
        );
        ensure!(
            !out.status.success(),
            "{version}: curl read a complete body of {} bytes",
            text.len()
        );
    }
    let responses = s.events("http_response")?;
    ensure!(responses.len() == 2, "{responses:?}");
    for r in &responses {
        ensure!(r["detail"]["end"] == "masking_failed", "{r}");
        ensure!(
            r["detail"]["masking_error"]
                .as_str()
                .is_some_and(|e| e.contains("invalid JSON")),
            "{r}"
        );
    }
    Ok(())
}

#[test]
fn an_http_session_exports_as_har_1_2_and_shows_its_request_log() -> Result<()> {
    let s = Setup::new()?;
    s.nginx.put_file("report.json", br#"{"rows": [1, 2, 3]}"#)?;
    // Three requests on one connection (one session): allowed with a query, allowed, denied.
    let script = format!(
        r#"
import json, requests
s = requests.Session()
h = {{"Host": "{HOST}", "Authorization": "Bearer the-jobs-own-secret"}}
a = s.get("https://{ip}/items/1?a=1&b=x%20y", headers=h, verify="{ca}")
b = s.get("https://{ip}/files/report.json", headers=h, verify="{ca}")
c = s.delete("https://{ip}/items/9", headers=h, verify="{ca}")
print(json.dumps([a.status_code, b.status_code, c.status_code]))
"#,
        ip = s.nginx.addr,
        ca = s.gateway_ca.display(),
    );
    let statuses = python_job(&s.daemon, &script)?;
    ensure!(statuses == serde_json::json!([200, 200, 403]), "{statuses}");
    let sessions = s.http_sessions()?;
    ensure!(sessions.len() == 1, "{sessions:?}");
    let id = sessions[0]["id"].to_string();
    // Each response is recorded when its body ends: wait for both.
    let complete = wait_until(Duration::from_secs(10), || {
        s.events("http_response").is_ok_and(|r| r.len() == 2)
    });
    ensure!(complete, "{:?}", s.events("http_response"));
    let har_path = s.export_har(&id)?;
    let schema = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/peers/http/har-1.2.schema.json"
    );
    let validated = std::process::Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import json, sys, jsonschema\n\
             jsonschema.validate(json.load(open(sys.argv[1])), json.load(open(sys.argv[2])))\n\
             print('valid')",
            har_path.to_str().unwrap(),
            schema,
        ])
        .output()?;
    ensure!(
        validated.status.success(),
        "not HAR 1.2: {}",
        String::from_utf8_lossy(&validated.stderr)
    );
    let text = fs::read_to_string(&har_path)?;
    ensure!(!text.contains("the-jobs-own-secret"), "{text}");
    ensure!(!text.contains(&s.token), "{text}");
    let har: Value = serde_json::from_str(&text)?;
    ensure!(har["log"]["version"] == "1.2", "{har}");
    ensure!(har["log"]["creator"]["name"] == "gateway", "{har}");
    let entries = har["log"]["entries"].as_array().context("entries")?;
    let expected = [
        ("GET", format!("https://{HOST}/items/1?a=1&b=x%20y"), 200),
        ("GET", format!("https://{HOST}/files/report.json"), 200),
        ("DELETE", format!("https://{HOST}/items/9"), 403),
    ];
    ensure!(entries.len() == expected.len(), "{har}");
    for (entry, (method, url, status)) in entries.iter().zip(&expected) {
        ensure!(
            entry["request"]["method"] == *method
                && entry["request"]["url"] == *url
                && entry["response"]["status"] == *status,
            "expected {method} {url} {status}: {entry}"
        );
        ensure!(entry["time"].as_f64().is_some_and(|t| t > 0.0), "{entry}");
        let auth = entry["request"]["headers"]
            .as_array()
            .and_then(|h| h.iter().find(|h| h["name"] == "authorization"))
            .context("authorization header listed")?;
        ensure!(
            auth["value"]
                .as_str()
                .is_some_and(|v| v.starts_with("[redacted")),
            "{auth}"
        );
    }
    ensure!(
        entries[0]["request"]["queryString"]
            == serde_json::json!([{"name": "a", "value": "1"}, {"name": "b", "value": "x y"}]),
        "{}",
        entries[0]["request"]
    );
    let report = &entries[1]["response"];
    ensure!(
        report["content"]["mimeType"] == "application/json"
            && report["bodySize"] == r#"{"rows": [1, 2, 3]}"#.len(),
        "{report}"
    );
    // The request log of `sessions show`.
    let shown = s.daemon.cli(&["sessions", "show", &id]);
    let shown = String::from_utf8_lossy(&shown.stdout);
    let log = shown.split("\nrequests\n").nth(1).context("request log")?;
    for (needle, what) in [
        ("/items/1?a=1&b=x%20y", "URL"),
        ("allow (jobs-may-call-the-api)", "decision"),
        ("deny (no-deletes)", "denial"),
        ("DELETE", "method"),
        ("403", "status"),
        (" ms", "duration"),
    ] {
        ensure!(
            log.contains(needle),
            "no {what} in the request log:\n{shown}"
        );
    }
    Ok(())
}

#[test]
fn a_client_that_drips_its_headers_is_cut_off_at_the_header_timeout() -> Result<()> {
    let s = Setup::new()?;
    // One byte every 200 ms keeps the connection busy without ever finishing the headers; the
    // `plain` target allows 2 s for them. The client gives up after 20 s.
    let script = format!(
        r#"
import json, socket, time
s = socket.create_connection(("{ip}", 80))
start = time.monotonic()
s.sendall(b"GET /slow HTTP/1.1\r\nHost: {HOST}\r\n")
answer, closed = b"", False
s.settimeout(0.2)
while time.monotonic() - start < 20:
    try:
        s.sendall(b"x")
    except OSError:
        closed = True
        break
    try:
        chunk = s.recv(65536)
        if not chunk:
            closed = True
            break
        answer += chunk
    except socket.timeout:
        pass
    except OSError:
        closed = True
        break
print(json.dumps({{"closed": closed, "answer": answer.decode(errors="replace")}}))
"#,
        ip = s.nginx.addr,
    );
    let result = python_job(&s.daemon, &script)?;
    ensure!(result["closed"] == true, "{result}");
    ensure!(
        result["answer"] == ""
            || result["answer"]
                .as_str()
                .is_some_and(|a| a.starts_with("HTTP/1.1 408")),
        "{result}"
    );
    ensure!(s.server_saw().is_empty(), "{:?}", s.server_saw());
    Ok(())
}

/// A gRPC target (the fixture's gRPC server, TLS of nginx's CA) with one method denied.
const GRPC: &str = r#"
[[targets]]
name = "grpc"
protocol = "http"
address = "@IP@:50051"
[targets.http]
tls = "terminate"
ca_file = "@CA@"
hosts = ["api.test"]
[targets.credentials]
token_file = "@TOKEN_FILE@"

[[rules]]
name = "no-secrets-over-grpc"
action = "deny"
targets = ["grpc"]
unauthenticated = true
reason = "the secret method is not for CI"
[rules.http]
paths = ["/pkg.Service/Secret"]

[[rules]]
name = "grpc-calls"
action = "allow"
targets = ["grpc"]
unauthenticated = true
"#;

#[test]
fn grpc_calls_keep_their_trailers_and_a_denied_method_gets_permission_denied() -> Result<()> {
    let s = Setup::with(GRPC)?;
    let server = s.nginx.grpc_server(&s.ns)?;
    // grpcio with the gateway's CA as its root: the one trust step.
    let script = format!(
        r#"
import grpc, json
ca = open("{ca}", "rb").read()
channel = grpc.secure_channel("{ip}:{port}", grpc.ssl_channel_credentials(ca),
    options=[("grpc.ssl_target_name_override", "{HOST}"), ("grpc.default_authority", "{HOST}")])
out = {{}}
reply, call = channel.unary_unary("/pkg.Service/Echo").with_call(b"hello", timeout=30)
out["echo"] = reply.decode()
out["echo_trailers"] = dict(call.trailing_metadata())
for name in ("Fail", "Secret"):
    try:
        channel.unary_unary("/pkg.Service/" + name)(b"x", timeout=30)
        out[name] = "ok"
    except grpc.RpcError as e:
        out[name] = {{"code": e.code().name, "details": e.details(),
                      "trailers": dict(e.trailing_metadata() or ())}}
print(json.dumps(out))
"#,
        ca = s.gateway_ca.display(),
        ip = s.nginx.addr,
        port = gateway_e2e::http::GRPC_PORT,
    );
    let result = python_job(&s.daemon, &script)?;
    ensure!(result["echo"] == "echo:hello", "{result}");
    ensure!(
        result["echo_trailers"]["x-served-by"] == "grpc-fixture",
        "{result}"
    );
    // The server got the injected token and echoed it in a trailer: the job reads it masked.
    let echoed = result["echo_trailers"]["x-seen-authorization"]
        .as_str()
        .unwrap_or_default();
    ensure!(
        !echoed.is_empty() && echoed.bytes().all(|b| b == b'*'),
        "{result}"
    );
    // The server's status, message and trailing metadata reach the client as they were.
    let fail = &result["Fail"];
    ensure!(fail["code"] == "FAILED_PRECONDITION", "{result}");
    ensure!(fail["details"] == "the precondition failed", "{result}");
    ensure!(
        fail["trailers"]["x-failure-detail"] == "precondition-x",
        "{result}"
    );
    // The denied method: a gRPC status the client understands, naming the rule.
    let secret = &result["Secret"];
    ensure!(secret["code"] == "PERMISSION_DENIED", "{result}");
    let details = secret["details"].as_str().unwrap_or_default();
    ensure!(
        details.contains("no-secrets-over-grpc") && details.contains("not for CI"),
        "{result}"
    );
    let calls = server.output();
    ensure!(
        calls.contains("call Echo") && calls.contains("call Fail"),
        "{calls}"
    );
    ensure!(!calls.contains("call Secret"), "the server saw {calls}");
    let requests = s.events("http_request")?;
    let decided = |path: &str| {
        requests
            .iter()
            .find(|e| e["detail"]["path"] == path)
            .map(|e| e["detail"]["decision"].clone())
    };
    ensure!(
        decided("/pkg.Service/Echo") == Some(Value::from("allow")),
        "{requests:?}"
    );
    ensure!(
        decided("/pkg.Service/Secret") == Some(Value::from("deny")),
        "{requests:?}"
    );
    Ok(())
}

/// A WebSocket path the rules deny (nginx proxies all of /ws/ to the echo server).
const WEBSOCKET_RULE: &str = r#"
[[rules]]
name = "no-admin-socket"
action = "deny"
targets = ["api"]
unauthenticated = true
reason = "the admin socket is not for CI"
[rules.http]
paths = ["/ws/admin"]
"#;

#[test]
fn websocket_upgrades_are_decided_relayed_and_recorded_with_counts() -> Result<()> {
    // The deny rule goes before the rule allowing the rest of the target.
    let s = Setup::with_rules_first(WEBSOCKET_RULE)?;
    let echo = s.nginx.websocket_echo(&s.ns)?;
    let script = format!(
        r#"
import asyncio, json, ssl, websockets
ctx = ssl.create_default_context(cafile="{ca}")
async def main():
    out = {{}}
    async with websockets.connect("wss://{HOST}/ws/echo", host="{ip}", port=443, ssl=ctx) as ws:
        replies = []
        for message in ["hello", "second message", b"\x00\x01binary"]:
            await ws.send(message)
            replies.append(await ws.recv())
        out["replies"] = [r if isinstance(r, str) else r.hex() for r in replies]
    # A message over the gateway's 1 MiB cap ends the WebSocket (1009), and never reaches the server.
    async with websockets.connect("wss://{HOST}/ws/echo", host="{ip}", port=443, ssl=ctx) as ws:
        await ws.send("x" * (2 * 1024 * 1024))
        try:
            await ws.recv()
            out["big"] = "echoed"
        except websockets.exceptions.ConnectionClosed as e:
            out["big"] = e.code
    try:
        async with websockets.connect("wss://{HOST}/ws/admin", host="{ip}", port=443, ssl=ctx) as ws:
            out["admin"] = "open"
    except websockets.exceptions.InvalidStatusCode as e:
        out["admin"] = e.status_code
    print(json.dumps(out))
asyncio.run(main())
"#,
        ca = s.gateway_ca.display(),
        ip = s.nginx.addr,
    );
    let result = python_job(&s.daemon, &script)?;
    ensure!(
        result["replies"] == serde_json::json!(["hello", "second message", "000162696e617279"]),
        "{result}"
    );
    ensure!(result["admin"] == 403, "{result}");
    ensure!(result["big"] == 1009, "{result}");
    // The echo server saw the two allowed connections and the three small messages; nginx saw
    // the upgrades with the injected credential, and never the denied path.
    let served = echo.output();
    ensure!(
        served.matches("connection /ws/echo").count() == 2
            && served.matches("message").count() == 3,
        "{served}"
    );
    let seen = s.server_saw();
    ensure!(
        seen.iter().all(|r| r["uri"] != "/ws/admin"),
        "nginx saw {seen:?}"
    );
    let upgrade = seen
        .iter()
        .find(|r| r["uri"] == "/ws/echo")
        .context("the upgrade reached nginx")?;
    ensure!(upgrade["status"] == 101, "{upgrade}");
    ensure!(
        upgrade["auth"] == format!("Bearer {}", s.token),
        "{upgrade}"
    );
    // Recorded: the upgrade request and its 101, then the relay's counts and text samples.
    let requests = s.events("http_request")?;
    ensure!(
        requests
            .iter()
            .any(|e| e["detail"]["path"] == "/ws/admin" && e["detail"]["decision"] == "deny"),
        "{requests:?}"
    );
    let responses = s.events("http_response")?;
    ensure!(
        responses.iter().any(|e| e["detail"]["status"] == 101),
        "{responses:?}"
    );
    let sockets = s.events("websocket")?;
    ensure!(sockets.len() == 2, "{sockets:?}");
    let too_big = sockets
        .iter()
        .find(|e| e["detail"]["up"]["messages"] == 0)
        .context("the WebSocket ended by the cap is recorded")?;
    ensure!(
        too_big["detail"]["end"]
            .as_str()
            .is_some_and(|e| e.starts_with("client:")),
        "{too_big}"
    );
    let relayed = sockets
        .iter()
        .find(|e| e["detail"]["up"]["messages"] == 3)
        .context("the WebSocket relayed")?;
    let d = &relayed["detail"];
    for way in ["up", "down"] {
        ensure!(d[way]["messages"] == 3, "{d}");
        ensure!(d[way]["text_messages"] == 2, "{d}");
        ensure!(d[way]["bytes"] == 5 + 14 + 8, "{d}");
        ensure!(
            d[way]["text_sample"] == serde_json::json!(["hello", "second message"]),
            "{d}"
        );
    }
    ensure!(!relayed.to_string().contains(&s.token), "{d}");
    Ok(())
}

#[test]
fn websocket_messages_reaching_the_job_and_the_recording_are_masked() -> Result<()> {
    let s = Setup::with(MASKING)?;
    let echo = s.nginx.websocket_echo(&s.ns)?;
    // The echo server sends each message back as it came: what the job reads is the upstream's.
    let script = format!(
        r#"
import asyncio, json, ssl, websockets
ctx = ssl.create_default_context(cafile="{ca}")
async def main():
    out = {{}}
    async with websockets.connect("wss://{HOST}/ws/echo", host="{ip}", port=443, ssl=ctx) as ws:
        replies = []
        for message in ["my ssn is 123-45-6789", '{{"ssn": 987654321, "name": "Alice", "mail": "alice@example.com"}}', "nothing here"]:
            await ws.send(message)
            replies.append(await ws.recv())
        out["replies"] = replies
    # A message the masking cannot read (binary) ends the WebSocket: 1003, never passed on.
    async with websockets.connect("wss://{HOST}/ws/echo", host="{ip}", port=443, ssl=ctx) as ws:
        await ws.send(b"\x00123-45-6789")
        try:
            out["binary"] = repr(await ws.recv())
        except websockets.exceptions.ConnectionClosed as e:
            out["binary"] = e.code
    print(json.dumps(out))
asyncio.run(main())
"#,
        ca = s.gateway_ca.display(),
        ip = s.nginx.addr,
    );
    let result = python_job(&s.daemon, &script)?;
    let replies = &result["replies"];
    ensure!(replies[0] == "my ssn is [masked:us_ssn]", "{result}");
    let doc: Value = serde_json::from_str(replies[1].as_str().unwrap_or_default())
        .with_context(|| format!("not JSON: {result}"))?;
    ensure!(
        doc == serde_json::json!({"ssn": "[masked]", "name": "Alice", "mail": "[masked:email]"}),
        "{result}"
    );
    ensure!(replies[2] == "nothing here", "{result}");
    ensure!(result["binary"] == 1003, "{result}");
    // The server got the job's messages unchanged (their lengths as sent), the binary one too.
    let served = echo.output();
    for len in [21, 64, 12, 12] {
        ensure!(
            served.contains(&format!("message {len}\n")),
            "{len}: {served}"
        );
    }
    let sockets = s.events("websocket")?;
    ensure!(sockets.len() == 2, "{sockets:?}");
    for e in &sockets {
        no_secret("recording", &e.to_string())?;
        ensure!(!e.to_string().contains("987654321"), "{e}");
    }
    let relayed = sockets
        .iter()
        .find(|e| e["detail"]["up"]["messages"] == 3)
        .context("the WebSocket relayed")?;
    let d = &relayed["detail"];
    for way in ["up", "down"] {
        ensure!(
            d[way]["text_sample"][0] == "my ssn is [masked:us_ssn]",
            "{d}"
        );
        ensure!(d[way]["text_sample"][2] == "nothing here", "{d}");
    }
    ensure!(d["down"]["masked"] == 3, "{d}");
    let cut = sockets
        .iter()
        .find(|e| e["detail"]["up"]["binary_messages"] == 1)
        .context("the WebSocket the masking ended")?;
    ensure!(
        cut["detail"]["end"]
            .as_str()
            .is_some_and(|e| e.contains("cannot be masked")),
        "{cut}"
    );
    Ok(())
}

/// A WebSocket over HTTP/2 (RFC 8441) from a job, with `e2e-ws2` (see its usage for `spec`);
/// what it printed.
fn ws2(s: &Setup, spec: &Value) -> Result<Value> {
    ws2_to(s, &format!("{}:443", s.nginx.addr), spec)
}

/// `ws2` to another address than nginx's 443.
fn ws2_to(s: &Setup, addr: &str, spec: &Value) -> Result<Value> {
    let ca = s.gateway_ca.display().to_string();
    let out = s
        .daemon
        .run_job(&[], ws2_bin(), &[addr, &ca, &spec.to_string()]);
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "e2e-ws2: {} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// An extended CONNECT as browsers send it, for `path`, with more headers.
fn extended_connect(path: &str, headers: &[(&str, &str)]) -> Value {
    let mut all = vec![serde_json::json!(["sec-websocket-version", "13"])];
    all.extend(headers.iter().map(|(k, v)| serde_json::json!([k, v])));
    serde_json::json!({ "method": "CONNECT", "protocol": "websocket", "path": path, "headers": all })
}

#[test]
fn websocket_over_http2_is_decided_masked_relayed_and_recorded_like_an_upgrade() -> Result<()> {
    // The rule denying /ws/admin is written for the WebSocket's GET: it holds on HTTP/2 too.
    let s = Setup::configured(WEBSOCKET_RULE, MASKING)?;
    let echo = s.nginx.websocket_echo(&s.ns)?;
    let mut chat = extended_connect(
        "/ws/echo",
        &[("sec-websocket-protocol", "chat.v1, chat.v2")],
    );
    chat["send"] = serde_json::json!(["my ssn is 123-45-6789", "nothing here"]);
    let mut plain = extended_connect("/ws/echo", &[]);
    plain["send"] = serde_json::json!(["second socket"]);
    let denied = extended_connect("/ws/admin", &[]);
    // Three streams of one HTTP/2 connection.
    let result = ws2(&s, &serde_json::json!({ "streams": [chat, plain, denied] }))?;
    let streams = &result["streams"];
    let chat = &streams[0];
    ensure!(chat["status"] == 200, "{result}");
    ensure!(
        chat["replies"] == serde_json::json!(["my ssn is [masked:us_ssn]", "nothing here"]),
        "{result}"
    );
    // The job is told the subprotocol the upstream chose, and nothing of HTTP/1.1's handshake.
    ensure!(
        chat["headers"]["sec-websocket-protocol"] == "chat.v2",
        "{result}"
    );
    for name in ["sec-websocket-accept", "upgrade", "connection"] {
        ensure!(chat["headers"].get(name).is_none(), "{name}: {result}");
    }
    let plain = &streams[1];
    ensure!(plain["status"] == 200, "{result}");
    ensure!(
        plain["headers"].get("sec-websocket-protocol").is_none(),
        "{result}"
    );
    ensure!(
        plain["replies"] == serde_json::json!(["second socket"]),
        "{result}"
    );
    let denied = &streams[2];
    ensure!(denied["status"] == 403, "{result}");
    ensure!(
        denied["body"]
            .as_str()
            .is_some_and(|b| b.contains("no-admin-socket")),
        "{result}"
    );
    // The server saw two WebSockets (HTTP/1.1 upgrades with the credential) and the job's
    // messages unchanged; never the denied path.
    let served = echo.output();
    ensure!(
        served.matches("connection /ws/echo").count() == 2
            && !served.contains("/ws/admin")
            && served.contains("message 21\n"),
        "{served}"
    );
    let seen = s.server_saw();
    ensure!(seen.iter().all(|r| r["uri"] != "/ws/admin"), "{seen:?}");
    let upgrades: Vec<_> = seen.iter().filter(|r| r["uri"] == "/ws/echo").collect();
    ensure!(upgrades.len() == 2, "{seen:?}");
    for u in &upgrades {
        ensure!(
            u["status"] == 101
                && u["protocol"] == "HTTP/1.1"
                && u["auth"] == format!("Bearer {}", s.token),
            "{u}"
        );
    }
    // Recorded as the GET it opens, on HTTP/2; its 200; the relay's counts and masked samples.
    let requests = s.events("http_request")?;
    let opened: Vec<_> = requests
        .iter()
        .filter(|e| e["detail"]["path"] == "/ws/echo")
        .collect();
    ensure!(opened.len() == 2, "{requests:?}");
    for e in &opened {
        let d = &e["detail"];
        ensure!(
            d["method"] == "GET"
                && d["version"] == "HTTP/2.0"
                && d["extended_connect"] == true
                && d["decision"] == "allow",
            "{d}"
        );
    }
    ensure!(
        requests.iter().any(|e| e["detail"]["path"] == "/ws/admin"
            && e["detail"]["decision"] == "deny"
            && e["detail"]["rule"] == "no-admin-socket"),
        "{requests:?}"
    );
    let responses = s.events("http_response")?;
    ensure!(
        responses
            .iter()
            .filter(|e| e["detail"]["status"] == 200 && e["detail"]["end"] == "upgraded")
            .count()
            == 2,
        "{responses:?}"
    );
    let sockets = s.events("websocket")?;
    ensure!(sockets.len() == 2, "{sockets:?}");
    let relayed = sockets
        .iter()
        .find(|e| e["detail"]["up"]["messages"] == 2)
        .context("the chat WebSocket relayed")?;
    let d = &relayed["detail"];
    for way in ["up", "down"] {
        ensure!(
            d[way]["text_sample"]
                == serde_json::json!(["my ssn is [masked:us_ssn]", "nothing here"]),
            "{d}"
        );
    }
    ensure!(d["down"]["masked"] == 1, "{d}");
    for e in &sockets {
        no_secret("recording", &e.to_string())?;
    }
    // `sessions show` lists the WebSocket's GET with its 200 and the upgrade.
    let session = s
        .http_sessions()?
        .into_iter()
        .find(|x| x["target"] == "api")
        .context("the api session")?;
    let shown = s
        .daemon
        .cli(&["sessions", "show", &session["id"].to_string()]);
    let shown = String::from_utf8_lossy(&shown.stdout);
    ensure!(
        shown.lines().any(|l| l.contains("GET")
            && l.contains("/ws/echo")
            && l.contains("200")
            && l.contains("upgraded")),
        "{shown}"
    );
    Ok(())
}

#[test]
fn extended_connects_that_make_no_sense_are_refused_recorded_and_never_reach_the_server()
-> Result<()> {
    let s = Setup::with_rules_first(WEBSOCKET_RULE)?;
    let echo = s.nginx.websocket_echo(&s.ns)?;
    let refused = [
        // A CONNECT tunnel, and a :protocol the gateway does not relay.
        (
            serde_json::json!({ "method": "CONNECT", "protocol": null, "authority": "api.test:443" }),
            405,
        ),
        (
            serde_json::json!({ "method": "CONNECT", "protocol": "connect-udp", "path": "/ws/echo" }),
            501,
        ),
        // HTTP/1.1's handshake on HTTP/2: a key the upstream would answer, a missing version.
        (
            extended_connect(
                "/ws/echo",
                &[("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")],
            ),
            400,
        ),
        (
            serde_json::json!({ "method": "CONNECT", "protocol": "websocket", "path": "/ws/echo" }),
            400,
        ),
        // Another host than the target's (and than the TLS server name).
        (
            {
                let mut v = extended_connect("/ws/echo", &[]);
                v["authority"] = serde_json::json!("evil.test");
                v
            },
            421,
        ),
        // A path read two ways.
        (extended_connect("/ws/../ws/admin", &[]), 400),
    ];
    let mut specs: Vec<Value> = refused.iter().map(|(spec, _)| spec.clone()).collect();
    // :protocol on a GET: HTTP/2 itself refuses the stream.
    specs.push(serde_json::json!({ "method": "GET", "protocol": "websocket", "path": "/ws/echo" }));
    let result = ws2(&s, &serde_json::json!({ "streams": specs }))?;
    for (i, (spec, status)) in refused.iter().enumerate() {
        ensure!(
            result["streams"][i]["status"] == *status,
            "{spec} should get {status}: {result}"
        );
    }
    ensure!(
        result["streams"][refused.len()]["error"].is_string(),
        ":protocol on a GET must be reset: {result}"
    );
    // Connection and Upgrade on an extended CONNECT: malformed on HTTP/2, the stream is reset
    // (PROTOCOL_ERROR) before any request exists.
    let raw = ws2(
        &s,
        &serde_json::json!({ "raw": [
            [":method", "CONNECT"], [":protocol", "websocket"], [":scheme", "https"],
            [":authority", "api.test"], [":path", "/ws/echo"], ["sec-websocket-version", "13"],
            ["connection", "upgrade"], ["upgrade", "websocket"],
        ]}),
    )?;
    ensure!(raw["reset"] == 1, "{raw}");
    // A message written before the answer: a denied WebSocket gets its 403 and the message goes
    // nowhere; an allowed one relays it once the 200 is sent, as a message read by the relay.
    let mut early = extended_connect("/ws/admin", &[]);
    early["send"] = serde_json::json!(["written early"]);
    let denied = ws2(&s, &serde_json::json!({ "early": early }))?;
    ensure!(denied["status"] == 403, "{denied}");
    early["path"] = serde_json::json!("/ws/echo");
    let allowed = ws2(&s, &serde_json::json!({ "early": early }))?;
    ensure!(
        allowed["status"] == 200 && allowed["reply"] == "written early",
        "{allowed}"
    );
    // Nothing but the allowed WebSocket reached the server.
    let served = echo.output();
    ensure!(
        served.matches("connection").count() == 1 && served.matches("message").count() == 1,
        "{served}"
    );
    let seen = s.server_saw();
    ensure!(
        seen.len() == 1 && seen[0]["uri"] == "/ws/echo",
        "nginx saw {seen:?}"
    );
    // Each refusal before policy is recorded with its reason.
    let refusals = s.events("refused")?;
    for (status, needle) in [
        (405, "CONNECT"),
        (501, "connect-udp"),
        (400, "Sec-WebSocket-Key"),
        (400, "Sec-WebSocket-Version"),
        (421, "evil.test"),
        (400, ".."),
    ] {
        ensure!(
            refusals.iter().any(|e| e["detail"]["status"] == status
                && e["detail"]["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains(needle))),
            "no {status} refusal about {needle}: {refusals:?}"
        );
    }
    // An upstream that answers the upgrade with 200 and a page (nginx's `location /`) opened
    // no WebSocket: the job gets 502, not the 200 that would tell it one is open.
    let result = ws2(
        &s,
        &serde_json::json!({ "streams": [extended_connect("/not-a-socket", &[])] }),
    )?;
    ensure!(result["streams"][0]["status"] == 502, "{result}");
    let responses = s.events("http_response")?;
    ensure!(
        responses
            .iter()
            .any(|e| e["detail"]["upstream_status"] == 200
                && e["detail"]["refused"]
                    .as_str()
                    .is_some_and(|r| r.contains("instead of opening the WebSocket"))),
        "{responses:?}"
    );
    Ok(())
}

#[test]
fn a_websocket_over_http2_needing_approval_waits_for_a_person() -> Result<()> {
    let s = Setup::with_rules_first(
        r#"
[[rules]]
name = "held-socket"
action = "require_approval"
targets = ["api"]
unauthenticated = true
approvers = ["ops"]
[rules.http]
methods = ["GET"]
paths = ["/ws/held"]
"#,
    )?;
    let echo = s.nginx.websocket_echo(&s.ns)?;
    let operation = format!("GET {HOST}/ws/held");
    // Approved: the message the job wrote while held goes to the server only afterwards.
    let mut early = extended_connect("/ws/held", &[]);
    early["send"] = serde_json::json!(["written while held"]);
    let approved = std::thread::scope(|scope| -> Result<Value> {
        let job = scope.spawn(|| ws2(&s, &serde_json::json!({ "early": early })));
        let id = pending(&s, &operation)?;
        ensure!(
            !echo.output().contains("connection"),
            "the server saw the WebSocket before the approval: {}",
            echo.output()
        );
        let decided = s.daemon.cli(&["approvals", "approve", &id]);
        ensure!(decided.status.success(), "{decided:?}");
        job.join().expect("job thread")
    })?;
    ensure!(
        approved["status"] == 200 && approved["reply"] == "written while held",
        "{approved}"
    );
    // Denied: 403 on the stream, nothing reaches the server.
    let denied = std::thread::scope(|scope| -> Result<Value> {
        let job = scope.spawn(|| {
            ws2(
                &s,
                &serde_json::json!({ "streams": [extended_connect("/ws/held", &[])] }),
            )
        });
        let id = pending(&s, &operation)?;
        let decided = s.daemon.cli(&["approvals", "deny", &id]);
        ensure!(decided.status.success(), "{decided:?}");
        job.join().expect("job thread")
    })?;
    ensure!(denied["streams"][0]["status"] == 403, "{denied}");
    ensure!(
        echo.output().matches("connection /ws/held").count() == 1,
        "{}",
        echo.output()
    );
    let approvals = s.events("http_approval")?;
    ensure!(
        approvals
            .iter()
            .any(|e| e["detail"]["approved_by"].is_string())
            && approvals.iter().any(|e| e["detail"]["denied"].is_string()),
        "{approvals:?}"
    );
    Ok(())
}

#[test]
fn websockets_over_one_http2_connection_are_bounded() -> Result<()> {
    let s = Setup::new()?;
    let echo = s.nginx.websocket_echo(&s.ns)?;
    // One more than the bound, opened at once and all held open until every answer came.
    let mut spec = extended_connect("/ws/echo", &[]);
    spec["send"] = serde_json::json!(["hi"]);
    spec["count"] = serde_json::json!(17);
    let result = ws2(&s, &serde_json::json!({ "streams": [spec] }))?;
    let statuses: Vec<&Value> = result["streams"]
        .as_array()
        .context("streams")?
        .iter()
        .map(|r| &r["status"])
        .collect();
    ensure!(
        statuses.iter().filter(|s| **s == 200).count() == 16
            && statuses.iter().filter(|s| **s == 429).count() == 1,
        "{result}"
    );
    ensure!(
        echo.output().matches("connection /ws/echo").count() == 16,
        "{}",
        echo.output()
    );
    let refusals = s.events("refused")?;
    ensure!(
        refusals.iter().any(|e| e["detail"]["status"] == 429),
        "{refusals:?}"
    );
    Ok(())
}

/// A target for the misbehaving WebSocket server (`Nginx::misbehaving_websocket`), open to jobs.
fn misbehaving_target() -> String {
    format!(
        r#"
[[targets]]
name = "misbehaving"
protocol = "http"
address = "@IP@:{MISBEHAVING_WEBSOCKET_PORT}"
[targets.http]
tls = "terminate"
ca_file = "@CA@"
hosts = ["{HOST}"]

[[rules]]
name = "jobs-may-open-websockets-there"
action = "allow"
targets = ["misbehaving"]
unauthenticated = true
"#
    )
}

/// The answers of the misbehaving server to an upgrade that the gateway refuses with a 502, and
/// the reason it gives and records.
const MISBEHAVIOURS: [(&str, &str); 3] = [
    (
        "/bad-accept",
        "the upstream's Sec-WebSocket-Accept does not answer the gateway's key",
    ),
    (
        "/unoffered-protocol",
        "the upstream chose a WebSocket subprotocol the job did not offer",
    ),
    (
        "/two-protocols",
        "the upstream chose more than one WebSocket subprotocol",
    ),
];

/// Every `http_response` of the HTTP sessions, with the path of its request.
fn responses_by_path(s: &Setup) -> Result<Vec<(String, Value)>> {
    let mut out = Vec::new();
    for session in s.http_sessions()? {
        let events = s.daemon.show_session(&session["id"])?["events"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let path_of = |number: &Value| {
            events
                .iter()
                .find(|e| e["kind"] == "http_request" && e["detail"]["request"] == *number)
                .and_then(|e| e["detail"]["path"].as_str())
                .unwrap_or_default()
                .to_string()
        };
        for e in events.iter().filter(|e| e["kind"] == "http_response") {
            out.push((path_of(&e["detail"]["request"]), e["detail"].clone()));
        }
    }
    Ok(out)
}

/// That the misbehaving server printed each of `lines`: what it wrote and read (bounded wait:
/// it prints after writing, the job may have its answer first).
fn check_served(server: &gateway_e2e::Process, lines: &[String]) -> Result<()> {
    wait_until(Duration::from_secs(10), || {
        let out = server.output();
        lines.iter().all(|l| out.contains(l.as_str()))
    });
    let served = server.output();
    for line in lines {
        ensure!(served.contains(line.as_str()), "{line}: {served}");
    }
    Ok(())
}

/// The refusals recorded for the misbehaving paths, and only the WebSocket of `/good` relayed.
fn check_recorded(s: &Setup, refused: &[(&str, &str, u16)]) -> Result<()> {
    let responses = responses_by_path(s)?;
    for (path, reason, upstream_status) in refused {
        let recorded: Vec<_> = responses.iter().filter(|(p, _)| p == path).collect();
        ensure!(!recorded.is_empty(), "{path}: {responses:?}");
        for (_, r) in recorded {
            ensure!(
                r["status"] == 502
                    && r["upstream_status"] == *upstream_status
                    && r["refused"] == *reason
                    && r["end"] != "upgraded",
                "{path}: {r}"
            );
        }
    }
    ensure!(
        responses
            .iter()
            .any(|(p, r)| p == "/good" && r["end"] == "upgraded" && r["upstream_status"] == 101),
        "{responses:?}"
    );
    // The relay records its WebSocket when it ends, after the job went.
    wait_until(Duration::from_secs(10), || {
        s.events("websocket").is_ok_and(|e| !e.is_empty())
    });
    let sockets = s.events("websocket")?;
    ensure!(sockets.len() == 1, "only /good was relayed: {sockets:?}");
    let d = &sockets[0]["detail"];
    ensure!(
        d["up"]["messages"] == 1 && d["down"]["text_sample"] == serde_json::json!(["hello"]),
        "{d}"
    );
    ensure!(!sockets[0].to_string().contains("rogue-frame"), "{d}");
    Ok(())
}

/// Upgrades from a job that checks nothing (raw TLS, as an attacker's client would send them)
/// and from `websockets` (which checks the 101): `{"raw": {path: {status, headers, after}},
/// "checked": status or error, "good": {reply, subprotocol}}`, `after` being what came after the
/// answer's head (its body, or after a 101 the first frame relayed).
const UPGRADES_FROM_A_JOB: &str = r#"
import asyncio, base64, json, os, socket, ssl, websockets
ctx = ssl.create_default_context(cafile=CA)
def raw(path):
    nonce = base64.b64encode(os.urandom(16)).decode()
    s = ctx.wrap_socket(socket.create_connection((IP, PORT), timeout=30), server_hostname=HOST)
    s.sendall(("GET " + path + " HTTP/1.1\r\nHost: " + HOST + "\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: " + nonce + "\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Protocol: chat.v1, chat.v2\r\n\r\n").encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    status = int(lines[0].split()[1])
    want = 2 if status == 101 else int(headers.get("content-length", ["0"])[0])
    try:
        while len(rest) < want:
            chunk = s.recv(65536)
            if not chunk:
                break
            rest += chunk
            if status == 101 and len(rest) >= 2:
                want = 2 + (rest[1] & 0x7F)
    except socket.timeout:
        pass
    s.close()
    return {"status": status, "headers": headers, "after": rest.decode("latin-1")}
async def main():
    out = {"raw": {p: raw(p) for p in ["/bad-accept", "/unoffered-protocol", "/two-protocols", "/ok-without-switching"]}}
    url = "wss://" + HOST + "/"
    try:
        async with websockets.connect(url + "bad-accept", host=IP, port=PORT, ssl=ctx) as ws:
            out["checked"] = "open"
    except websockets.exceptions.InvalidStatusCode as e:
        out["checked"] = e.status_code
    except websockets.exceptions.InvalidHandshake as e:
        out["checked"] = "handshake: " + str(e)
    async with websockets.connect(url + "good", host=IP, port=PORT, ssl=ctx, subprotocols=["chat.v1", "chat.v2"]) as ws:
        await ws.send("hello")
        out["good"] = {"reply": await ws.recv(), "subprotocol": ws.subprotocol}
    print(json.dumps(out))
asyncio.run(main())
"#;

#[test]
fn websocket_upgrades_that_a_misbehaving_upstream_answers_wrongly_are_refused_and_relay_nothing()
-> Result<()> {
    let s = Setup::with(&misbehaving_target())?;
    let server = s.nginx.misbehaving_websocket(&s.ns)?;
    let script = format!(
        "CA, IP, PORT, HOST = {ca:?}, {ip:?}, {MISBEHAVING_WEBSOCKET_PORT}, {HOST:?}\n{UPGRADES_FROM_A_JOB}",
        ca = s.gateway_ca.display().to_string(),
        ip = s.nginx.addr.to_string(),
    );
    let result = python_job(&s.daemon, &script)?;
    // Each wrong 101 is a 502 that says why: the job never holds a WebSocket the gateway did
    // not verify, and the frame the server wrote right after it never reaches the job.
    for (path, reason) in MISBEHAVIOURS {
        let r = &result["raw"][path];
        ensure!(r["status"] == 502, "{path}: {result}");
        let after = r["after"].as_str().unwrap_or_default();
        ensure!(
            after.contains(reason) && !after.contains("rogue-frame"),
            "{path}: {result}"
        );
    }
    // A checking client reads the refusal as the status it is.
    ensure!(result["checked"] == 502, "{result}");
    // A 200 to an upgrade is an ordinary response: no WebSocket, and nothing after its body.
    let ok = &result["raw"]["/ok-without-switching"];
    ensure!(
        ok["status"] == 200
            && ok["after"] == "not a websocket\n"
            && ok["headers"].get("upgrade").is_none(),
        "{result}"
    );
    // The same target opens a well-behaved WebSocket: the failures are the misbehaviours'.
    ensure!(
        result["good"] == serde_json::json!({ "reply": "hello", "subprotocol": "chat.v1" }),
        "{result}"
    );
    let mut lines: Vec<String> = MISBEHAVIOURS
        .iter()
        .map(|(p, _)| p)
        .chain(&["/ok-without-switching"])
        .map(|p| format!("rogue-frame {p}\n"))
        .collect();
    lines.push("message 5\n".into());
    check_served(&server, &lines)?;
    let refused: Vec<_> = MISBEHAVIOURS.iter().map(|(p, r)| (*p, *r, 101)).collect();
    check_recorded(&s, &refused)?;
    let responses = responses_by_path(&s)?;
    ensure!(
        responses
            .iter()
            .any(|(p, r)| p == "/ok-without-switching" && r["status"] == 200),
        "{responses:?}"
    );
    Ok(())
}

#[test]
fn websockets_over_http2_to_a_misbehaving_upstream_are_refused_and_relay_nothing() -> Result<()> {
    let s = Setup::with(&misbehaving_target())?;
    let server = s.nginx.misbehaving_websocket(&s.ns)?;
    let paths = [
        "/good",
        "/bad-accept",
        "/unoffered-protocol",
        "/two-protocols",
        "/ok-without-switching",
    ];
    let streams: Vec<Value> = paths
        .iter()
        .map(|p| {
            let mut stream = extended_connect(p, &[("sec-websocket-protocol", "chat.v1, chat.v2")]);
            stream["send"] = serde_json::json!(["hello"]);
            stream
        })
        .collect();
    let addr = format!("{}:{MISBEHAVING_WEBSOCKET_PORT}", s.nginx.addr);
    let result = ws2_to(&s, &addr, &serde_json::json!({ "streams": streams }))?;
    let good = &result["streams"][0];
    ensure!(
        good["status"] == 200
            && good["headers"]["sec-websocket-protocol"] == "chat.v1"
            && good["replies"] == serde_json::json!(["hello"]),
        "{result}"
    );
    let not_switched = "the upstream answered 200 OK instead of opening the WebSocket";
    let refused: Vec<(&str, &str, u16)> = MISBEHAVIOURS
        .iter()
        .map(|(p, r)| (*p, *r, 101))
        .chain([("/ok-without-switching", not_switched, 200)])
        .collect();
    // Each is a 502 on its stream that says why; no stream became a WebSocket, so the job never
    // sent its message nor read the frame the server wrote.
    for (i, (path, reason, _)) in refused.iter().enumerate() {
        let r = &result["streams"][i + 1];
        ensure!(
            r["status"] == 502
                && r["body"].as_str().is_some_and(|b| b.contains(reason))
                && r.get("replies").is_none(),
            "{path}: {result}"
        );
    }
    ensure!(!result.to_string().contains("rogue-frame"), "{result}");
    let mut lines: Vec<String> = paths[1..]
        .iter()
        .map(|p| format!("rogue-frame {p}\n"))
        .collect();
    lines.push("message 5\n".into());
    check_served(&server, &lines)?;
    check_recorded(&s, &refused)
}

/// A passthrough target on nginx's port 9443: the gateway decides on the TLS server name only.
const PASSTHROUGH: &str = r#"
[[targets]]
name = "pinned"
protocol = "http"
address = "@IP@:9443"
[targets.http]
tls = "passthrough"
hosts = ["api.test", "*.svc.test"]
header_timeout = "5s"

[[rules]]
name = "no-blocked-name"
action = "deny"
targets = ["pinned"]
unauthenticated = true
reason = "blocked.svc.test is not for CI"
[rules.http]
hosts = ["blocked.svc.test"]

[[rules]]
name = "pinned-clients"
action = "allow"
targets = ["pinned"]
unauthenticated = true
"#;

#[test]
fn passthrough_relays_tls_unread_and_decides_on_the_server_name_only() -> Result<()> {
    let s = Setup::with(PASSTHROUGH)?;
    let ip = s.nginx.addr.to_string();
    let curl = |name: &str, ca: &PathBuf, path: &str| {
        let resolve = format!("{name}:9443:{ip}");
        let url = format!("https://{name}:9443{path}");
        s.daemon.run_job(
            &[],
            "curl",
            &[
                "-sS",
                "--max-time",
                "30",
                "--cacert",
                ca.to_str().unwrap_or_default(),
                "--resolve",
                &resolve,
                "-w",
                "\n%{http_code}",
                &url,
            ],
        )
    };
    // nginx's own certificate reaches the job: it verifies with nginx's CA, not the gateway's.
    let out = curl(HOST, &s.nginx.ca, "/whoami");
    let (body, status) = split(&out);
    ensure!(
        status == "200",
        "{status} {body} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Nothing is added inside the TLS: no credential.
    ensure!(body.trim_end() == "auth= key=", "{body}");
    let out = curl(HOST, &s.gateway_ca, "/whoami");
    ensure!(
        out.status.code() == Some(60),
        "verified with the gateway's CA: {out:?}"
    );
    // A name that is not a host of the target, a name a rule denies, no name at all: closed
    // after the ClientHello, before any byte reaches the server.
    for (name, path) in [
        ("other.test", "/other"),
        ("blocked.svc.test", "/blocked"),
        (ip.as_str(), "/no-sni"),
    ] {
        let out = curl(name, &s.nginx.ca, path);
        ensure!(out.status.code() == Some(35), "{name}: {out:?}");
    }
    // Bytes that are not TLS.
    let raw = s.daemon.run_job(
        &[],
        httpraw_bin(),
        &[
            &format!("{ip}:9443"),
            "GET /garbage HTTP/1.1\\r\\nHost: api.test\\r\\n\\r\\n",
        ],
    );
    ensure!(
        !String::from_utf8_lossy(&raw.stdout).contains("HTTP/1.1"),
        "{raw:?}"
    );
    // The one request: the client that verified with the gateway's CA stopped at the handshake.
    let seen = s.server_saw();
    ensure!(
        seen.len() == 1 && seen[0]["uri"] == "/whoami",
        "nginx saw {seen:?}"
    );
    // Recorded: the server name of each connection, why the refused ones were refused, and the
    // relayed one's byte counts.
    let hellos = s.events("client_tls")?;
    ensure!(
        hellos
            .iter()
            .filter(|e| e["detail"]["passthrough"] == true && e["detail"]["server_name"] == HOST)
            .count()
            == 2,
        "{hellos:?}"
    );
    let refused = s.events("refused")?;
    let reasons: Vec<String> = refused
        .iter()
        .map(|e| {
            e["detail"]["reason"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    for expected in [
        "TLS server name \"other.test\" is not a host of target \"pinned\"",
        "blocked.svc.test is not for CI",
        "the ClientHello names no server (SNI)",
    ] {
        ensure!(
            reasons.iter().any(|r| r.contains(expected)),
            "{expected}: {reasons:?}"
        );
    }
    let errors = s.events("protocol_error")?;
    ensure!(
        errors.iter().any(|e| e["detail"]["error"]
            .as_str()
            .is_some_and(|m| m.starts_with("not a TLS ClientHello"))),
        "{errors:?}"
    );
    let closed = s.events("closed")?;
    ensure!(
        closed.iter().any(|e| e["detail"]["server_name"] == HOST
            && e["detail"]["bytes_up"].as_u64() > Some(200)
            && e["detail"]["bytes_down"].as_u64() > Some(500)),
        "{closed:?}"
    );
    Ok(())
}

#[test]
fn passthrough_bounds_the_client_hello_in_size_and_time() -> Result<()> {
    let s = Setup::with(PASSTHROUGH)?;
    // A handshake message declared 60000 bytes long, sent in records of 16000: past the 32 KiB
    // the gateway reads. Then a record header and nothing more: past header_timeout (5 s).
    let script = format!(
        r#"
import json, socket
out = {{}}
def refused(send):
    s = socket.create_connection(("{ip}", 9443), timeout=60)
    try:
        send(s)
        return len(s.recv(100))
    except OSError as e:
        return type(e).__name__
    finally:
        s.close()
def large(s):
    body = b"\x01" + (60000).to_bytes(3, "big") + b"\x03\x03" + b"\x00" * 59996
    for i in range(0, len(body), 16000):
        chunk = body[i:i + 16000]
        s.sendall(b"\x16\x03\x01" + len(chunk).to_bytes(2, "big") + chunk)
out["large"] = refused(large)
out["slow"] = refused(lambda s: s.sendall(b"\x16\x03\x01"))
print(json.dumps(out))
"#,
        ip = s.nginx.addr,
    );
    let result = python_job(&s.daemon, &script)?;
    // Closed without an answer (an end of stream, or a reset when unread bytes were left).
    for case in ["large", "slow"] {
        ensure!(
            result[case] == 0 || result[case] == "ConnectionResetError",
            "{case}: {result}"
        );
    }
    let errors: Vec<String> = s
        .events("protocol_error")?
        .iter()
        .map(|e| {
            e["detail"]["error"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    for expected in [
        "the ClientHello is larger than 32768 bytes",
        "no TLS ClientHello in time",
    ] {
        ensure!(
            errors.iter().any(|e| e == expected),
            "{expected}: {errors:?}"
        );
    }
    let seen = s.server_saw();
    ensure!(seen.is_empty(), "nginx saw {seen:?}");
    Ok(())
}

/// The passthrough target with one more name, which people must approve.
fn passthrough_with_approval() -> String {
    let held = r#"
[[rules]]
name = "held-name-needs-approval"
action = "require_approval"
targets = ["pinned"]
unauthenticated = true
approvers = ["ops"]
[rules.http]
hosts = ["held.svc.test"]

"#;
    let allow = "[[rules]]\nname = \"pinned-clients\"";
    PASSTHROUGH.replace(allow, &format!("{held}{allow}"))
}

#[test]
fn a_passthrough_connection_needing_approval_is_held_until_a_person_decides() -> Result<()> {
    let s = Setup::with(&passthrough_with_approval())?;
    let ip = s.nginx.addr.to_string();
    let curl = |path: &str, max_time: &str| {
        let resolve = format!("held.svc.test:9443:{ip}");
        let url = format!("https://held.svc.test:9443{path}");
        s.daemon.run_job(
            &[],
            "curl",
            &[
                "-sS",
                "--max-time",
                max_time,
                "--cacert",
                s.nginx.ca.to_str().unwrap_or_default(),
                "--resolve",
                &resolve,
                "-w",
                "\n%{http_code}",
                &url,
            ],
        )
    };
    let operation = "TLS to held.svc.test (passthrough)";
    for (verdict, path) in [("approve", "/held-approved"), ("deny", "/held-denied")] {
        let out = std::thread::scope(|scope| -> Result<Output> {
            let job = scope.spawn(|| curl(path, "60"));
            let id = pending(&s, operation)?;
            // Held: nothing reached the server while people decide.
            ensure!(
                s.server_saw().iter().all(|r| r["uri"] != path),
                "{verdict}: reached the server before a decision"
            );
            let decided = s.daemon.cli(&["approvals", verdict, &id]);
            ensure!(decided.status.success(), "{decided:?}");
            Ok(job.join().expect("curl thread"))
        })?;
        let (body, status) = split(&out);
        if verdict == "approve" {
            // nginx's own certificate (verified with nginx's CA) and its answer.
            ensure!(
                status == "200" && body.contains(&format!("GET {path}")),
                "{verdict}: {status} {body} {}",
                String::from_utf8_lossy(&out.stderr)
            );
        } else {
            ensure!(out.status.code() == Some(35), "{verdict}: {out:?}");
        }
    }
    // A client that gives up while it waits: its request is abandoned, and a later approval
    // cannot open the connection.
    let out = std::thread::scope(|scope| -> Result<Output> {
        let job = scope.spawn(|| curl("/held-abandoned", "3"));
        pending(&s, operation)?;
        Ok(job.join().expect("curl thread"))
    })?;
    ensure!(out.status.code() == Some(28), "gave up: {out:?}");
    let abandoned = wait_until(Duration::from_secs(30), || {
        s.daemon
            .cli_json(&["approvals", "list", "--json"])
            .ok()
            .and_then(|l| l.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .any(|a| a["operation"] == operation && a["status"] == "abandoned")
    });
    ensure!(
        abandoned,
        "{:?}",
        s.daemon.cli_json(&["approvals", "list", "--json"])
    );
    let seen = s.server_saw();
    ensure!(
        seen.len() == 1 && seen[0]["uri"] == "/held-approved",
        "nginx saw {seen:?}"
    );
    // Recorded: the approval before the relay, the denial as a refusal.
    let approvals = s.events("http_approval")?;
    ensure!(
        approvals
            .iter()
            .any(|e| e["detail"]["rule"] == "held-name-needs-approval"
                && e["detail"]["approved_by"].is_string()
                && e["detail"]["server_name"] == "held.svc.test"),
        "{approvals:?}"
    );
    let refused = s.events("refused")?;
    ensure!(
        refused
            .iter()
            .filter(|e| e["detail"]["rule"] == "held-name-needs-approval")
            .count()
            == 2,
        "{refused:?}"
    );
    Ok(())
}

/// A URL typed on a command line holds what the masking hides: the session's record of the
/// connecting process (`sessions show`, `--json`, the HAR export) and the approver's view have
/// its command line and its parent shell's masked with the target's detectors.
#[test]
fn command_lines_in_the_session_record_and_the_approval_are_masked() -> Result<()> {
    let s = Setup::with(MASKING)?;
    let curl = |method_args: &str, path: &str| {
        let script = format!(
            "curl -sS --max-time 60 --cacert {ca} --resolve {HOST}:443:{ip} {method_args} 'https://{HOST}{path}'; echo done",
            ca = s.gateway_ca.display(),
            ip = s.nginx.addr,
        );
        s.daemon.run_job(&[], "sh", &["-c", &script])
    };
    let out = curl("", "/v1/users?ssn=123-45-6789");
    ensure!(
        String::from_utf8_lossy(&out.stdout).contains("done"),
        "{out:?}"
    );
    // Held for approval: what the approver reads of the process is masked.
    let (held, approval) = std::thread::scope(|scope| -> Result<(Output, String)> {
        let job = scope.spawn(|| curl("-d version=42", "/deploy?ticket=123-45-6789"));
        let id = pending(&s, &format!("POST {HOST}/deploy?ticket=[masked:us_ssn]"))?;
        let shown = [
            s.daemon.cli(&["approvals", "show", &id]),
            s.daemon.cli(&["approvals", "show", &id, "--json"]),
            s.daemon.cli(&["approvals", "list", "--json"]),
        ]
        .iter()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .collect::<Vec<_>>()
        .join("\n");
        let decided = s.daemon.cli(&["approvals", "approve", &id]);
        ensure!(decided.status.success(), "{decided:?}");
        Ok((job.join().expect("curl thread"), shown))
    })?;
    ensure!(
        String::from_utf8_lossy(&held.stdout).contains("done"),
        "{held:?}"
    );
    no_secret("approval", &approval)?;
    ensure!(
        approval.contains("curl"),
        "the approver sees the process: {approval}"
    );
    // The upstream got both requests as typed.
    let seen = s.server_saw();
    for uri in ["/v1/users?ssn=123-45-6789", "/deploy?ticket=123-45-6789"] {
        ensure!(seen.iter().any(|r| r["uri"] == uri), "{uri}: {seen:?}");
    }
    let sessions = s.http_sessions()?;
    ensure!(sessions.len() == 2, "{sessions:?}");
    for session in sessions {
        let id = session["id"].to_string();
        let json = s.daemon.show_session(&id)?;
        let process = &json["process"];
        // Recorded, and masked: the curl's own command line and its shell's.
        let masked = |cmdline: &Value| {
            cmdline.as_array().is_some_and(|a| {
                a.iter()
                    .any(|arg| arg.as_str().is_some_and(|x| x.contains("[masked:us_ssn]")))
            })
        };
        ensure!(masked(&process["cmdline"]), "{process}");
        ensure!(
            process["ancestry"]
                .as_array()
                .is_some_and(|a| a.iter().any(|p| p["comm"] == "sh" && masked(&p["cmdline"]))),
            "{process}"
        );
        let text = s.daemon.cli(&["sessions", "show", &id]);
        let har_path = s.export_har(&id)?;
        let text = String::from_utf8_lossy(&text.stdout).into_owned();
        ensure!(text.contains("[masked:us_ssn]"), "{text}");
        no_secret("sessions show --json", &json.to_string())?;
        no_secret("sessions show", &text)?;
        no_secret("har", &fs::read_to_string(&har_path)?)?;
    }
    Ok(())
}

/// A command line may hold what any target's masking hides, and the shell above it is recorded
/// with every connection it makes: a connection to a target no `[[masking]]` rule names,
/// refused at the ClientHello for a name that is none of the target's `hosts` (the request is
/// never read), is recorded with its command lines masked by the detectors of every rule.
/// Refusals in the kernel (a target no rule allows the job, an address that is no target) are
/// recorded with what the kernel saw of the process: no command line at all.
#[test]
fn command_lines_are_masked_when_no_masked_target_is_known() -> Result<()> {
    let s = Setup::with(&format!(
        "{MASKING}\n[[targets]]\nname = \"closed\"\nprotocol = \"tcp\"\naddress = \"@IP@:9000\"\n"
    ))?;
    let secret = "123-45-6789";
    let script = format!(
        "curl -sS --max-time 30 --cacert {ca} --resolve elsewhere.example:8443:{ip} 'https://elsewhere.example:8443/v1/users?ssn={secret}'; \
         curl -sS --max-time 30 'http://{ip}:9000/v1/users?ssn={secret}'; \
         curl -sS --max-time 30 'http://{ip}:81/v1/users?ssn={secret}'; echo done",
        ca = s.gateway_ca.display(),
        ip = s.nginx.addr,
    );
    let out = s.daemon.run_job(&[], "sh", &["-c", &script]);
    ensure!(
        String::from_utf8_lossy(&out.stdout).contains("done"),
        "{out:?}"
    );
    ensure!(s.server_saw().is_empty(), "{:?}", s.server_saw());
    // The kernel's refusal is recorded from its ring buffer, after the job.
    fn port(p: &str) -> impl Fn(&Value) -> bool + '_ {
        move |x: &Value| {
            x["destination"]
                .as_str()
                .is_some_and(|d| d.ends_with(&format!(":{p}")))
        }
    }
    let mut sessions = Vec::new();
    wait_until(Duration::from_secs(10), || {
        sessions = s.daemon.sessions().unwrap_or_default();
        sessions.iter().any(port("81")) && sessions.iter().any(port("9000"))
    });
    let masked = |cmdline: &Value| {
        cmdline.as_array().is_some_and(|a| {
            a.iter()
                .any(|arg| arg.as_str().is_some_and(|x| x.contains("[masked:us_ssn]")))
        })
    };
    // The connection is allowed, its server name refused.
    let session = sessions
        .iter()
        .find(|x| port("8443")(x))
        .with_context(|| format!("no session to :8443: {sessions:?}"))?;
    ensure!(session["target"] == "untrusted", "{session}");
    let id = session["id"].to_string();
    let json = s.daemon.show_session(&id)?;
    ensure!(
        json["events"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["kind"] == "refused")),
        "{json}"
    );
    let process = &json["process"];
    ensure!(masked(&process["cmdline"]), "{process}");
    ensure!(
        process["ancestry"]
            .as_array()
            .is_some_and(|a| a.iter().any(|p| p["comm"] == "sh" && masked(&p["cmdline"]))),
        "{process}"
    );
    ensure!(!json.to_string().contains(secret), "{json}");
    let text = s.daemon.cli(&["sessions", "show", &id]);
    let text = String::from_utf8_lossy(&text.stdout);
    ensure!(
        text.contains("[masked:us_ssn]") && !text.contains(secret),
        "{text}"
    );
    for p in ["9000", "81"] {
        let refused = sessions
            .iter()
            .find(|x| port(p)(x))
            .with_context(|| format!("no refusal of :{p} recorded: {sessions:?}"))?;
        ensure!(
            refused["kind"] == "kernel" && refused["decision"] == "deny",
            "{refused}"
        );
        let json = s.daemon.show_session(&refused["id"])?;
        ensure!(
            json["process"]["comm"] == "curl"
                && json["process"]["cmdline"].is_null()
                && !json.to_string().contains(secret),
            "{json}"
        );
    }
    Ok(())
}
