//! Just-in-time approval end to end: psql in an intercepted job (with a real OIDC identity) issues
//! statements a rule holds; people decide through the CLI, through the web page signed in with the
//! test OIDC issuer (curl, and headless Chromium), webhooks reach a receiver on loopback.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, Result, bail, ensure};
use gateway_e2e::{
    Daemon, DaemonConfig, Netns, Postgres, TempDir, free_port, gateway_bin,
    oidc::{Issuer, Mode},
    probe_bin, run_ok, unique_id, wait_until,
};
use serde_json::{Value, json};

/// A webhook receiver on loopback: every POSTed JSON body, in order.
struct Hooks {
    port: u16,
    bodies: Arc<Mutex<Vec<Value>>>,
}

impl Hooks {
    fn start() -> Result<Hooks> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let bodies: Arc<Mutex<Vec<Value>>> = Arc::default();
        let sink = bodies.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let mut reader = BufReader::new(conn);
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; length];
                if reader.read_exact(&mut body).is_ok()
                    && let Ok(v) = serde_json::from_slice(&body)
                {
                    sink.lock().unwrap().push(v);
                }
                let _ = reader.get_mut().write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
            }
        });
        Ok(Hooks { port, bodies })
    }

    fn events(&self) -> Vec<Value> {
        self.bodies.lock().unwrap().clone()
    }
}

struct Setup {
    daemon: Daemon,
    pg: Postgres,
    _issuer: Issuer,
    hooks: Hooks,
    web: String,
    token: PathBuf,
    dir: TempDir,
    _ns: Netns,
}

const SCHEMA: &str = "
create table orders (id int primary key, customer text);
insert into orders values (1, 'zebra'), (2, 'yak'), (3, 'walrus'), (4, 'vole');
alter table orders owner to app;
";

impl Setup {
    /// `mode`: enforce or audit; `extra_rules` go before the rules every test shares.
    fn start(mode: &str, extra_rules: &str) -> Result<Setup> {
        Self::start_with_env(mode, extra_rules, &[])
    }

    fn start_with_env(mode: &str, extra_rules: &str, env: &[(&str, &str)]) -> Result<Setup> {
        let id = unique_id();
        let dir = TempDir::new(&format!("a{id}"));
        let ns = Netns::new(&id)?;
        let pg = Postgres::start(&ns, dir.path())?;
        pg.admin_sql(SCHEMA)?;
        let web_port = free_port();
        let web = format!("http://127.0.0.1:{web_port}");
        let issuer =
            Issuer::start_with_redirects(dir.path(), Mode::Real, &[format!("{web}/callback")])?;
        let hooks = Hooks::start()?;
        let secret = dir.path().join("db.secret");
        std::fs::write(&secret, "apppw\n")?;
        let client_secret = dir.path().join("web.secret");
        std::fs::write(&client_secret, "web-secret\n")?;
        let token = dir.path().join("job.token");
        std::fs::write(&token, issuer.client_token("ci-app")?)?;
        let body = format!(
            r#"
[[issuers]]
url = "{iss}"
audiences = ["https://gateway.test"]
ca_file = "{ca}"

[approvals]
default_timeout = "60s"
webhooks = ["http://127.0.0.1:{hook}/hook"]

[approvals.web]
listen = "127.0.0.1:{web_port}"
issuer = "{iss}"
client_id = "web-approvals"
client_secret_file = "{client_secret}"
ca_file = "{ca}"

[[approvers]]
name = "dba"
unix_users = ["root"]
subjects = ["alice", "bob", "ci-app"]

[[targets]]
name = "orders-db"
protocol = "postgres"
address = "{pg}:5432"
[targets.credentials]
user = "app"
password_file = "{secret}"

{extra_rules}

[[rules]]
name = "deletes-need-approval"
action = "require_approval"
approvers = ["dba"]
targets = ["orders-db"]
[rules.sql]
kinds = ["delete"]

[[rules]]
name = "ci-may-query"
action = "allow"
targets = ["orders-db"]
claims = {{ repository = "acme/*" }}
"#,
            iss = issuer.url,
            ca = issuer.tls.ca.display(),
            hook = hooks.port,
            client_secret = client_secret.display(),
            pg = pg.host,
            secret = secret.display(),
        );
        let daemon = Daemon::start_with_env(
            DaemonConfig {
                server: format!("mode = \"{mode}\""),
                body,
            },
            env,
        )?;
        Ok(Setup {
            daemon,
            pg,
            _issuer: issuer,
            hooks,
            web,
            token,
            dir,
            _ns: ns,
        })
    }

    /// psql as a job bound to the `ci-app` identity; it has no database password.
    fn psql(&self, args: &[&str]) -> Output {
        let host = self.pg.host.to_string();
        let mut cmd = Command::new(gateway_bin());
        cmd.arg("--control-socket")
            .arg(&self.daemon.control_socket)
            .args(["run", "--token-file"])
            .arg(&self.token)
            .args([
                "--", "timeout", "120", "psql", "-X", "-At", "-h", &host, "-U", "agent", "-d",
                "app",
            ])
            .args(args)
            .env_remove("PGPASSWORD")
            .env("PGPASSFILE", "/nonexistent");
        cmd.output().expect("gateway run psql")
    }

    fn approvals(&self) -> Result<Vec<Value>> {
        Ok(self
            .daemon
            .cli_json(&["approvals", "list", "--json"])?
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// Waits for a pending request whose operation contains `text`.
    fn pending(&self, text: &str) -> Result<Value> {
        let mut found = Value::Null;
        wait_until(Duration::from_secs(20), || {
            found = self
                .approvals()
                .ok()
                .and_then(|l| {
                    l.into_iter().find(|a| {
                        a["status"] == "pending"
                            && a["operation"].as_str().unwrap_or("").contains(text)
                    })
                })
                .unwrap_or_default();
            !found.is_null()
        });
        ensure!(
            !found.is_null(),
            "no pending request for {text:?}: {:?}\n{}",
            self.approvals()?,
            self.daemon.log()
        );
        Ok(found)
    }

    fn count(&self, customer: &str) -> Result<String> {
        Ok(self
            .pg
            .admin_sql(&format!(
                "select count(*) from orders where customer = '{customer}'"
            ))?
            .trim()
            .to_string())
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Runs `job` while `decide` acts on the pending request; returns the job's output.
fn while_waiting(
    job: impl FnOnce() -> Output + Send,
    decide: impl FnOnce() -> Result<()>,
) -> Result<Output> {
    std::thread::scope(|scope| {
        let handle = scope.spawn(job);
        let decided = decide();
        let out = handle.join().expect("job thread");
        decided.map(|()| out)
    })
}

#[test]
fn approved_through_the_cli_the_statement_runs_and_everything_is_recorded() -> Result<()> {
    let s = Setup::start("enforce", "")?;
    let out = while_waiting(
        || {
            s.psql(&[
                "-c",
                "DELETE FROM orders WHERE customer = 'zebra' RETURNING id",
            ])
        },
        || {
            let request = s.pending("'zebra'")?;
            // The request carries who, what, where and from which process.
            assert_eq!(request["requester"]["subject"], "ci-app");
            assert_eq!(request["target"], "orders-db");
            assert_eq!(request["rule"], "deletes-need-approval");
            assert_eq!(request["kind"], "sql");
            assert_eq!(request["detail"]["process"]["comm"], "psql");
            let out = s
                .daemon
                .cli(&["approvals", "approve", request["id"].as_str().unwrap()]);
            ensure!(out.status.success(), "{}", stderr(&out));
            Ok(())
        },
    )?;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out).lines().next(),
        Some("1"),
        "the rows arrive: {}",
        stdout(&out)
    );
    // psql shows the gateway's notice while it waits.
    assert!(
        stderr(&out).contains("needs approval")
            && stderr(&out).contains("gateway approvals approve apr-"),
        "{}",
        stderr(&out)
    );
    assert_eq!(s.count("zebra")?, "0");

    // The session's log: request, vote, webhook deliveries.
    let sessions = s.daemon.sessions()?;
    let session = sessions
        .iter()
        .find(|x| x["target"] == "orders-db")
        .context("session")?;
    assert!(wait_until(Duration::from_secs(10), || {
        s.daemon.show_session(&session["id"]).is_ok_and(|v| {
            let kinds: Vec<String> = v["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["kind"].as_str().unwrap().to_string())
                .collect();
            ["approval_requested", "approval_vote", "webhook_delivered"]
                .iter()
                .all(|k| kinds.iter().any(|x| x == k))
        })
    }));
    let shown = s.daemon.show_session(&session["id"])?;
    let vote = shown["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "approval_vote")
        .unwrap();
    assert_eq!(vote["detail"]["approver"], "root");

    // The webhook receiver got the request (Slack-style text) and the decision.
    assert!(
        wait_until(Duration::from_secs(10), || s.hooks.events().len() >= 2),
        "{:?}",
        s.hooks.events()
    );
    let hooks = s.hooks.events();
    assert_eq!(hooks[0]["event"], "approval_requested");
    assert!(
        hooks[0]["text"]
            .as_str()
            .unwrap()
            .contains("DELETE FROM orders WHERE customer = 'zebra'"),
        "{}",
        hooks[0]
    );
    assert!(
        hooks[0]["text"].as_str().unwrap().contains(&s.web),
        "links to the page: {}",
        hooks[0]
    );
    assert_eq!(hooks[1]["event"], "approval_decided");
    assert_eq!(hooks[1]["approval"]["status"], "approved");
    Ok(())
}

#[test]
fn denied_with_a_reason_the_client_sees_it_and_the_session_goes_on() -> Result<()> {
    let s = Setup::start("enforce", "")?;
    let out = while_waiting(
        || {
            s.psql(&[
                "-v",
                "ON_ERROR_STOP=0",
                "-c",
                "DELETE FROM orders WHERE customer = 'yak'",
                "-c",
                "SELECT 'still here'",
            ])
        },
        || {
            let id = s.pending("'yak'")?["id"].as_str().unwrap().to_string();
            let out = s.daemon.cli(&[
                "approvals",
                "deny",
                &id,
                "--reason",
                "not during the freeze",
            ]);
            ensure!(out.status.success(), "{}", stderr(&out));
            Ok(())
        },
    )?;
    let err = stderr(&out);
    assert!(err.contains("42501") || err.contains("denied"), "{err}");
    assert!(
        err.contains("not during the freeze") && err.contains("root"),
        "{err}"
    );
    assert!(
        stdout(&out).contains("still here"),
        "the session continues: {}",
        stdout(&out)
    );
    assert_eq!(s.count("yak")?, "1", "the DELETE never ran");
    Ok(())
}

#[test]
fn approval_for_a_duration_lets_the_next_matching_statement_pass_without_asking() -> Result<()> {
    let s = Setup::start("enforce", "")?;
    let out = while_waiting(
        || s.psql(&["-c", "DELETE FROM orders WHERE customer = 'walrus'"]),
        || {
            let id = s.pending("'walrus'")?["id"].as_str().unwrap().to_string();
            let out = s.daemon.cli(&["approvals", "approve", &id, "--for", "10m"]);
            ensure!(
                out.status.success() && stdout(&out).contains("600s"),
                "{}{}",
                stdout(&out),
                stderr(&out)
            );
            Ok(())
        },
    )?;
    assert!(out.status.success(), "{}", stderr(&out));
    // Same rule, identity and target: passes at once, in a new session, without a new request.
    let before = s.approvals()?.len();
    let out = s.psql(&["-c", "DELETE FROM orders WHERE customer = 'vole'"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(s.count("vole")?, "0");
    assert_eq!(s.approvals()?.len(), before, "no new request");
    Ok(())
}

/// A person signed in to the approvals page with curl, through the issuer's login and consent.
struct WebSession {
    jar: PathBuf,
    csrf: String,
    base: String,
}

impl WebSession {
    fn login(base: &str, user: &str, dir: &Path) -> Result<WebSession> {
        let jar = dir.join(format!("cookies-{user}-{}", unique_id()));
        let curl = |args: &[&str]| -> Result<String> {
            let mut c = Command::new("curl");
            c.args(["-sS", "-k", "--max-time", "10", "-c"])
                .arg(&jar)
                .arg("-b")
                .arg(&jar)
                .args(args);
            run_ok(&mut c)
        };
        let mut next = curl(&[
            "-o",
            "/dev/null",
            "-w",
            "%{redirect_url}",
            &format!("{base}/login"),
        ])?;
        for _ in 0..8 {
            if next.starts_with(&format!("{base}/callback")) {
                let callback = curl(&["-D", "-", "-o", "/dev/null", &next])?;
                let page = curl(&[&format!("{base}/")])?;
                let csrf = page
                    .split("data-csrf=\"")
                    .nth(1)
                    .and_then(|r| r.split('"').next())
                    .filter(|c| !c.is_empty())
                    .with_context(|| format!("not signed in; the callback answered:\n{callback}"))?
                    .to_string();
                return Ok(WebSession {
                    jar,
                    csrf,
                    base: base.to_string(),
                });
            }
            if next.contains("/interaction/") {
                let form = curl(&[&next])?;
                next = if form.contains("name=\"login\"") {
                    curl(&[
                        "-o",
                        "/dev/null",
                        "-w",
                        "%{redirect_url}",
                        "-d",
                        "prompt=login",
                        "-d",
                        &format!("login={user}"),
                        "-d",
                        "password=x",
                        &next,
                    ])?
                } else {
                    curl(&[
                        "-o",
                        "/dev/null",
                        "-w",
                        "%{redirect_url}",
                        "-d",
                        "prompt=consent",
                        &next,
                    ])?
                };
            } else {
                next = curl(&["-o", "/dev/null", "-w", "%{redirect_url}", &next])?;
            }
        }
        bail!("sign-in did not complete (last URL {next})")
    }

    /// POSTs JSON to the page's API; `csrf`/`origin` as a browser (or an attacker) would send them.
    fn post(
        &self,
        path: &str,
        body: &Value,
        csrf: Option<&str>,
        origin: Option<&str>,
    ) -> Result<(u16, Value)> {
        let mut c = Command::new("curl");
        c.args(["-sS", "--max-time", "10", "-b"]).arg(&self.jar);
        c.args([
            "-H",
            "content-type: application/json",
            "-d",
            &body.to_string(),
            "-w",
            "\n%{http_code}",
        ]);
        if let Some(t) = csrf {
            c.args(["-H", &format!("x-csrf-token: {t}")]);
        }
        if let Some(o) = origin {
            c.args(["-H", &format!("origin: {o}")]);
        }
        c.arg(format!("{}{path}", self.base));
        let out = run_ok(&mut c)?;
        let (body, code) = out.rsplit_once('\n').context("no status")?;
        Ok((
            code.trim().parse()?,
            serde_json::from_str(body).unwrap_or(Value::Null),
        ))
    }
}

#[test]
fn self_approval_csrf_forgery_and_bad_decisions_are_refused_without_changing_anything() -> Result<()>
{
    // A second rule needs two approvers, to test double approval.
    let quorum = r#"
[[rules]]
name = "updates-need-two"
action = "require_approval"
approvers = ["dba"]
quorum = 2
targets = ["orders-db"]
[rules.sql]
kinds = ["update"]
"#;
    let s = Setup::start("enforce", quorum)?;
    let out = while_waiting(
        || {
            s.psql(&[
                "-v",
                "ON_ERROR_STOP=0",
                "-c",
                "DELETE FROM orders WHERE customer = 'zebra'",
                "-c",
                "UPDATE orders SET customer = 'x' WHERE id = 2",
            ])
        },
        || {
            let delete = s.pending("'zebra'")?["id"].as_str().unwrap().to_string();
            let approve = format!("/api/approvals/{delete}/approve");

            // (e) The job's own identity, signed in to the page, may not approve its own request.
            let me = WebSession::login(&s.web, "ci-app", s.dir.path())?;
            let (code, body) = me.post(&approve, &json!({}), Some(&me.csrf), Some(&s.web))?;
            assert_eq!(code, 409, "{body}");
            assert!(
                body["error"]
                    .as_str()
                    .unwrap()
                    .contains("may not approve their own request"),
                "{body}"
            );

            // CSRF: a cross-site POST carries the cookie but neither the token nor our Origin.
            let alice = WebSession::login(&s.web, "alice", s.dir.path())?;
            let (code, _) = alice.post(&approve, &json!({}), None, Some("https://evil.example"))?;
            assert_eq!(code, 403);
            let (code, _) = alice.post(
                &approve,
                &json!({}),
                Some(&alice.csrf),
                Some("https://evil.example"),
            )?;
            assert_eq!(code, 403, "right token, foreign origin");
            let (code, _) = alice.post(&approve, &json!({}), Some("forged-token"), Some(&s.web))?;
            assert_eq!(code, 403, "wrong token");
            // A forged session cookie is nobody.
            let forged = WebSession {
                jar: s.dir.path().join("forged-jar"),
                csrf: alice.csrf.clone(),
                base: s.web.clone(),
            };
            std::fs::write(
                &forged.jar,
                "127.0.0.1\tFALSE\t/\tFALSE\t0\tgw_session\tforged-session-id\n",
            )?;
            let (code, _) = forged.post(&approve, &json!({}), Some(&alice.csrf), Some(&s.web))?;
            assert_eq!(code, 401);
            // An oversized reason.
            let long = "x".repeat(2000);
            let (code, body) = alice.post(
                &format!("/api/approvals/{delete}/deny"),
                &json!({ "reason": long }),
                Some(&alice.csrf),
                Some(&s.web),
            )?;
            assert_eq!(code, 409, "{body}");
            assert!(
                body["error"].as_str().unwrap().contains("longer than"),
                "{body}"
            );
            // Unknown request through the CLI.
            let out = s.daemon.cli(&["approvals", "approve", "apr-0000000000"]);
            assert!(
                !out.status.success() && stderr(&out).contains("does not exist"),
                "{}",
                stderr(&out)
            );
            // Still pending after all that.
            assert_eq!(s.pending("'zebra'")?["votes"].as_array().unwrap().len(), 0);

            // Now a legitimate approval through the page; approving again is "already approved".
            let (code, body) = alice.post(&approve, &json!({}), Some(&alice.csrf), Some(&s.web))?;
            assert_eq!(code, 200, "{body}");
            assert_eq!(body["status"], "approved");
            let (code, body) = alice.post(&approve, &json!({}), Some(&alice.csrf), Some(&s.web))?;
            assert_eq!(code, 409);
            assert!(
                body["error"].as_str().unwrap().contains("already approved"),
                "{body}"
            );

            // Quorum 2: the same approver twice does not make two.
            let update = s.pending("UPDATE orders")?["id"]
                .as_str()
                .unwrap()
                .to_string();
            let out = s.daemon.cli(&["approvals", "approve", &update]);
            assert!(
                out.status.success() && stdout(&out).contains("1 of 2"),
                "{}{}",
                stdout(&out),
                stderr(&out)
            );
            let out = s.daemon.cli(&["approvals", "approve", &update]);
            assert!(
                !out.status.success() && stderr(&out).contains("already approved this request"),
                "{}",
                stderr(&out)
            );
            let bob = WebSession::login(&s.web, "bob", s.dir.path())?;
            let (code, body) = bob.post(
                &format!("/api/approvals/{update}/approve"),
                &json!({}),
                Some(&bob.csrf),
                Some(&s.web),
            )?;
            assert_eq!(
                (code, body["status"].as_str()),
                (200, Some("approved")),
                "{body}"
            );
            Ok(())
        },
    )?;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(s.count("zebra")?, "0");
    assert_eq!(s.count("x")?, "1");
    let decided = s.approvals()?;
    let update = decided
        .iter()
        .find(|a| a["rule"] == "updates-need-two")
        .unwrap();
    let voters: Vec<&str> = update["votes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["display"].as_str().unwrap())
        .collect();
    assert_eq!(voters, vec!["root", "bob@example.test"]);
    Ok(())
}

#[test]
fn the_web_page_in_chromium_shows_the_request_and_approving_it_delivers_the_rows() -> Result<()> {
    let s = Setup::start("enforce", "")?;
    let shot = s.dir.path().join("approvals.png");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("peers/browser/approve.mjs");
    let sql = "DELETE FROM orders WHERE customer = 'walrus' RETURNING customer";
    let mut browser_out = None;
    let out = while_waiting(
        || s.psql(&["-c", sql]),
        || {
            let out = Command::new("node")
                .arg(&script)
                .arg(&s.web)
                .arg("alice")
                .arg("customer = 'walrus'")
                .arg(&shot)
                .current_dir(script.parent().unwrap())
                .output()?;
            browser_out = Some(out);
            Ok(())
        },
    )?;
    let browser = browser_out.unwrap();
    let verdict: Value = serde_json::from_str(stdout(&browser).trim())
        .with_context(|| format!("browser: {}{}", stdout(&browser), stderr(&browser)))?;
    assert_eq!(verdict["signedIn"], true, "{verdict}");
    assert!(
        verdict["who"]
            .as_str()
            .unwrap()
            .contains("alice@example.test — approver for dba"),
        "{verdict}"
    );
    assert_eq!(verdict["sawRequest"], true, "{verdict}");
    assert_eq!(verdict["approved"], true, "{verdict}");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out).lines().next(),
        Some("walrus"),
        "psql got its row: {}",
        stdout(&out)
    );

    // The screenshot really shows the statement: read it back with OCR.
    let text = run_ok(Command::new("tesseract").arg(&shot).arg("stdout"))?;
    let squeeze = |t: &str| {
        t.to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric())
            .collect::<String>()
    };
    assert!(
        squeeze(&text).contains("deletefromorderswherecustomer"),
        "OCR of the screenshot: {text}"
    );
    assert!(
        squeeze(&text).contains("walrus"),
        "OCR of the screenshot: {text}"
    );
    let approved = s
        .approvals()?
        .into_iter()
        .find(|a| a["operation"] == sql)
        .unwrap();
    assert_eq!(approved["votes"][0]["display"], "alice@example.test");
    Ok(())
}

#[test]
fn jobs_cannot_reach_the_approvals_page_even_in_audit_mode() -> Result<()> {
    let s = Setup::start("audit", "")?;
    let page = s.web.trim_start_matches("http://").to_string();
    let out = s.daemon.run_job(&[], probe_bin(), &["connect", &page]);
    let v: Value = serde_json::from_str(stdout(&out).trim())?;
    assert_eq!(v["errno"], libc::EPERM, "{v}");
    // Audit mode really lets other non-targets through (this is what the block is an exception to).
    let other = s.daemon.run_job(
        &[],
        probe_bin(),
        &["connect", &format!("{}:5432", s.pg.host)],
    );
    let w: Value = serde_json::from_str(stdout(&other).trim())?;
    assert_ne!(w["errno"], libc::EPERM, "{w}");
    // And a host process (the person's browser) reaches it.
    let status = run_ok(Command::new("curl").args([
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("{}/", s.web),
    ]))?;
    assert_eq!(status, "200");
    Ok(())
}

#[test]
fn a_client_that_leaves_abandons_its_request_and_a_restart_abandons_the_rest() -> Result<()> {
    let mut s = Setup::start("enforce", "")?;
    // The job gives up after 3 s: its pending request becomes abandoned, not left pending.
    let host = s.pg.host.to_string();
    let out = while_waiting(
        || {
            Command::new(gateway_bin())
                .arg("--control-socket")
                .arg(&s.daemon.control_socket)
                .args(["run", "--token-file"])
                .arg(&s.token)
                .args([
                    "--", "timeout", "3", "psql", "-X", "-At", "-h", &host, "-U", "agent", "-d",
                    "app", "-c",
                ])
                .arg("DELETE FROM orders WHERE customer = 'yak'")
                .output()
                .expect("run")
        },
        || s.pending("'yak'").map(|_| ()),
    )?;
    assert!(!out.status.success());
    assert!(
        wait_until(Duration::from_secs(10), || {
            s.approvals().is_ok_and(|l| {
                l.iter().any(|a| {
                    a["status"] == "abandoned" && a["operation"].as_str().unwrap().contains("'yak'")
                })
            })
        }),
        "{:?}",
        s.approvals()?
    );
    let out = s.daemon.cli(&[
        "approvals",
        "approve",
        s.approvals()?[0]["id"].as_str().unwrap(),
    ]);
    assert!(
        stderr(&out).contains("already abandoned"),
        "{}",
        stderr(&out)
    );
    assert_eq!(s.count("yak")?, "1");

    // A request pending when the daemon dies is abandoned by the next one.
    let _ = while_waiting(
        || s.psql(&["-c", "DELETE FROM orders WHERE customer = 'vole'"]),
        || {
            s.pending("'vole'")?;
            // SAFETY: kill(2) of the daemon this test started (reaped by kill9 below).
            unsafe { libc::kill(s.daemon.pid() as i32, libc::SIGKILL) };
            Ok(())
        },
    )?;
    s.daemon.kill9();
    s.daemon.start_again()?;
    let vole = s
        .approvals()?
        .into_iter()
        .find(|a| a["operation"].as_str().unwrap().contains("'vole'"))
        .unwrap();
    assert_eq!(vole["status"], "abandoned", "{vole}");
    assert_eq!(s.count("vole")?, "1");
    Ok(())
}

#[test]
fn a_unix_approver_group_decides_through_the_cli_and_a_dead_webhook_blocks_nothing() -> Result<()> {
    let mut s = Setup::start("enforce", "")?;
    // Members of `nogroup` (the user `nobody`) may use the approval commands, nothing else; one
    // webhook points at a closed port.
    let dead = format!("http://127.0.0.1:{}/hook", free_port());
    let text = std::fs::read_to_string(&s.daemon.config_path)?
        .replacen(
            "[approvals]\n",
            "[approvals]\ncli_unix_group = \"nogroup\"\nwebhook_timeout = \"1s\"\n",
            1,
        )
        .replacen("webhooks = [", &format!("webhooks = [\"{dead}\", "), 1)
        .replacen(
            "unix_users = [\"root\"]",
            "unix_users = [\"root\"]\nunix_groups = [\"nogroup\"]",
            1,
        );
    std::fs::write(&s.daemon.config_path, text)?;
    s.daemon.restart()?;
    let as_nobody = |args: &[&str]| -> Output {
        Command::new("runuser")
            .args(["-u", "nobody", "--"])
            .arg(gateway_bin())
            .arg("--control-socket")
            .arg(&s.daemon.control_socket)
            .args(args)
            .output()
            .expect("runuser")
    };
    let refused = as_nobody(&["status"]);
    assert!(
        !refused.status.success()
            && stderr(&refused).contains("may only use the approval commands"),
        "{}",
        stderr(&refused)
    );

    let started = std::time::Instant::now();
    let out = while_waiting(
        || s.psql(&["-c", "DELETE FROM orders WHERE customer = 'yak'"]),
        || {
            let id = s.pending("'yak'")?["id"].as_str().unwrap().to_string();
            let listed = as_nobody(&["approvals", "list"]);
            ensure!(
                listed.status.success() && stdout(&listed).contains(&id),
                "{}{}",
                stdout(&listed),
                stderr(&listed)
            );
            let approved = as_nobody(&["approvals", "approve", &id]);
            ensure!(approved.status.success(), "{}", stderr(&approved));
            Ok(())
        },
    )?;
    assert!(out.status.success(), "{}", stderr(&out));
    // Retries against the dead hook (3 attempts, 1 s timeout) did not hold the statement up.
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(s.count("yak")?, "0");
    let request = s
        .approvals()?
        .into_iter()
        .find(|a| a["operation"].as_str().unwrap().contains("'yak'"))
        .unwrap();
    assert_eq!(request["votes"][0]["display"], "nobody");
    // The failure is recorded; the live receiver still got both notifications.
    let session = request["session_id"].to_string();
    assert!(wait_until(Duration::from_secs(20), || {
        s.daemon.show_session(&session).is_ok_and(|v| {
            v["events"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["kind"] == "webhook_failed" && e["detail"]["url"] == dead.as_str())
        })
    }));
    assert!(wait_until(Duration::from_secs(10), || s
        .hooks
        .events()
        .len()
        >= 2));

    // A sign-in that did not come from the issuer (a made-up code and state) gets nobody in.
    let forged = run_ok(Command::new("curl").args([
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("{}/callback?code=forged&state=forged", s.web),
    ]))?;
    assert_eq!(forged, "400");
    Ok(())
}

/// libfaketime, preloaded into the daemon so that the test can move its wall clock.
fn libfaketime() -> Result<String> {
    let files = run_ok(Command::new("dpkg").args(["-L", "libfaketime"]))?;
    files
        .lines()
        .find(|l| l.ends_with("/libfaketime.so.1"))
        .map(str::to_string)
        .context("libfaketime is not installed (cargo xtask setup installs faketime)")
}

#[test]
fn a_jump_of_the_wall_clock_neither_expires_nor_extends_a_request() -> Result<()> {
    let timed = r#"
[[rules]]
name = "updates-timed"
action = "require_approval"
approvers = ["dba"]
approval_timeout = "6s"
targets = ["orders-db"]
[rules.sql]
kinds = ["update"]
"#;
    let id = unique_id();
    let clock = std::env::temp_dir().join(format!("gwe-clock-{id}"));
    std::fs::write(&clock, "+0\n")?;
    let lib = libfaketime()?;
    let env = [
        ("LD_PRELOAD", lib.as_str()),
        ("FAKETIME_TIMESTAMP_FILE", clock.to_str().unwrap()),
        ("FAKETIME_NO_CACHE", "1"),
        // Only the wall clock moves: deadlines run on the monotonic clock.
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
    ];
    let result = (|| -> Result<()> {
        let s = Setup::start_with_env("enforce", timed, &env)?;
        // Forward by two hours while a request waits: it is still pending, and can be approved.
        let out = while_waiting(
            || s.psql(&["-c", "UPDATE orders SET customer = 'moved' WHERE id = 1"]),
            || {
                let request = s.pending("'moved'")?;
                std::fs::write(&clock, "+2h\n")?;
                std::thread::sleep(Duration::from_millis(1500));
                let again = s.pending("'moved'")?;
                ensure!(again["id"] == request["id"], "{again}");
                let out = s
                    .daemon
                    .cli(&["approvals", "approve", request["id"].as_str().unwrap()]);
                ensure!(
                    out.status.success(),
                    "approving after the jump: {}",
                    stderr(&out)
                );
                Ok(())
            },
        )?;
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(s.count("moved")?, "1");
        // The daemon's wall clock really jumped: the decision is stamped two hours after the request.
        let moved = s
            .approvals()?
            .into_iter()
            .find(|a| a["operation"].as_str().unwrap().contains("'moved'"))
            .unwrap();
        let at =
            |k: &str| chrono::DateTime::parse_from_rfc3339(moved[k].as_str().unwrap()).unwrap();
        assert!(
            (at("decided_at") - at("created_at")).num_minutes() >= 119,
            "{moved}"
        );
        // Back by a day: the next request still expires after its 6 s, not a day later.
        std::fs::write(&clock, "-1d\n")?;
        let started = std::time::Instant::now();
        let out = s.psql(&["-c", "UPDATE orders SET customer = 'late' WHERE id = 2"]);
        let err = stderr(&out);
        assert!(!out.status.success() && err.contains("expired"), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the deadline moved with the wall clock"
        );
        assert_eq!(s.count("late")?, "0");
        Ok(())
    })();
    let _ = std::fs::remove_file(&clock);
    result
}
