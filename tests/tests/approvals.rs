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
[[approvers.people]]
name = "admin"
unix_users = ["root"]
subjects = ["admin"]

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
        let daemon = Daemon::builder(DaemonConfig {
            server: format!("mode = \"{mode}\""),
            body,
        })
        .envs(env)
        .start()?;
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

    /// psql as a job without a token (the shared `unauthenticated` identity).
    fn psql_unauthenticated(&self, args: &[&str]) -> Output {
        let host = self.pg.host.to_string();
        let mut cmd = Command::new(gateway_bin());
        cmd.arg("--control-socket")
            .arg(&self.daemon.control_socket)
            .args([
                "run", "--", "timeout", "120", "psql", "-X", "-At", "-h", &host, "-U", "agent",
                "-d", "app",
            ])
            .args(args)
            .env_remove("PGPASSWORD")
            .env("PGPASSFILE", "/nonexistent");
        cmd.output().expect("gateway run psql")
    }

    /// Rewrites the daemon's configuration and restarts it.
    fn reconfigure(&mut self, edit: impl FnOnce(String) -> String) -> Result<()> {
        let text = edit(std::fs::read_to_string(&self.daemon.config_path)?);
        std::fs::write(&self.daemon.config_path, text)?;
        self.daemon.restart()
    }

    /// The CLI as the Unix user `nobody` (a member of `nogroup`).
    fn as_nobody(&self, args: &[&str]) -> Output {
        Command::new("runuser")
            .args(["-u", "nobody", "--"])
            .arg(gateway_bin())
            .arg("--control-socket")
            .arg(&self.daemon.control_socket)
            .args(args)
            .output()
            .expect("runuser")
    }

    /// The request with this id, as `approvals list --json` shows it.
    fn approval(&self, id: &str) -> Result<Value> {
        self.approvals()?
            .into_iter()
            .find(|a| a["id"] == id)
            .with_context(|| format!("no request {id}"))
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
                let callback = curl(&["-D", "-", &next])?;
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

    /// GETs from the page's API with the session's cookie.
    fn get(&self, path: &str) -> Result<(u16, String)> {
        let out = run_ok(
            Command::new("curl")
                .args(["-sS", "--max-time", "10", "-b"])
                .arg(&self.jar)
                .args(["-w", "\n%{http_code}"])
                .arg(format!("{}{path}", self.base)),
        )?;
        let (body, code) = out.rsplit_once('\n').context("no status")?;
        Ok((code.trim().parse()?, body.to_string()))
    }

    /// The value of the session cookie (for raw HTTP requests).
    fn cookie(&self) -> Result<String> {
        let jar = std::fs::read_to_string(&self.jar)?;
        jar.lines()
            .filter_map(|l| {
                l.split('\t')
                    .collect::<Vec<_>>()
                    .get(5..7)
                    .map(|kv| kv.to_vec())
            })
            .find(|kv| kv[0] == "gw_session")
            .map(|kv| kv[1].to_string())
            .context("no session cookie")
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
    // A zero-width space in a comment: the card must show it, not hide it.
    let sql =
        "DELETE FROM orders WHERE customer = 'walrus' RETURNING customer /* zero\u{200b}width */";
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
    let op = verdict["op"].as_str().unwrap_or("");
    assert!(
        op.contains("zero\\u{200b}width") && !op.contains('\u{200b}'),
        "the card shows the hidden character: {verdict}"
    );
    // A standing approval's button says what it lets through.
    assert!(
        verdict["buttons"].as_array().unwrap().iter().any(|b| b
            .as_str()
            .unwrap()
            .contains("rule deletes-need-approval, identity ci-app, target orders-db")),
        "{verdict}"
    );
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

/// A rule for UPDATE statements that needs two approvers.
const QUORUM_TWO: &str = r#"
[[rules]]
name = "updates-need-two"
action = "require_approval"
approvers = ["dba"]
quorum = 2
targets = ["orders-db"]
[rules.sql]
kinds = ["update"]
"#;

/// `nobody` (group `nogroup`) may use the approval commands and is in the `dba` group.
fn with_nobody_as_cli_approver(text: String) -> String {
    text.replacen(
        "[approvals]\n",
        "[approvals]\ncli_unix_group = \"nogroup\"\n",
        1,
    )
    .replacen(
        "unix_users = [\"root\"]",
        "unix_users = [\"root\", \"nobody\"]",
        1,
    )
}

/// Adds `[[approvers.people]]` entries (TOML text) to the `dba` group.
fn with_people(text: String, people: &str) -> String {
    const FIRST: &str = "[[approvers.people]]\nname = \"admin\"";
    assert!(text.contains(FIRST), "{text}");
    text.replacen(FIRST, &format!("{people}\n{FIRST}"), 1)
}

/// Approves `id` on the page as `who`; the HTTP status and the answer.
fn web_approve(s: &Setup, who: &WebSession, id: &str, body: Value) -> Result<(u16, Value)> {
    who.post(
        &format!("/api/approvals/{id}/approve"),
        &body,
        Some(&who.csrf),
        Some(&s.web),
    )
}

#[test]
fn one_person_voting_from_the_cli_and_the_page_counts_once_toward_a_quorum() -> Result<()> {
    let mut s = Setup::start("enforce", QUORUM_TWO)?;
    // erin (not the person who started the job: that is carol) can use the CLI as the Unix user `nobody` and the page as the OIDC subject `erin`.
    s.reconfigure(|t| {
        with_nobody_as_cli_approver(t).replacen("\"ci-app\"]", "\"ci-app\", \"erin\"]", 1)
    })?;

    // Not said to be one person: the gateway cannot tell a Unix account and an OIDC account apart,
    // so the second channel's vote does not complete the quorum.
    let out = while_waiting(
        || s.psql(&["-c", "UPDATE orders SET customer = 'one' WHERE id = 1"]),
        || {
            let id = s.pending("'one'")?["id"].as_str().unwrap().to_string();
            let cli = s.as_nobody(&["approvals", "approve", &id]);
            ensure!(
                cli.status.success() && stdout(&cli).contains("1 of 2"),
                "{}{}",
                stdout(&cli),
                stderr(&cli)
            );
            let erin = WebSession::login(&s.web, "erin", s.dir.path())?;
            let (code, body) = web_approve(&s, &erin, &id, json!({}))?;
            ensure!(
                code == 409,
                "the same person's second vote counted: {code} {body}"
            );
            ensure!(
                body["error"]
                    .as_str()
                    .unwrap_or("")
                    .contains("[[approvers.people]]"),
                "{body}"
            );
            ensure!(s.approval(&id)?["status"] == "pending");
            let deny = s.daemon.cli(&["approvals", "deny", &id]);
            ensure!(deny.status.success(), "{}", stderr(&deny));
            Ok(())
        },
    )?;
    assert!(!out.status.success());
    assert_eq!(s.count("one")?, "0", "the UPDATE never ran");

    // Said to be one person: the second vote is that person's again; bob's makes two.
    s.reconfigure(|t| {
        with_people(
            t,
            "[[approvers.people]]\nname = \"erin\"\nunix_users = [\"nobody\"]\nsubjects = [\"erin\"]",
        )
    })?;
    let out = while_waiting(
        || s.psql(&["-c", "UPDATE orders SET customer = 'two' WHERE id = 2"]),
        || {
            let id = s.pending("'two'")?["id"].as_str().unwrap().to_string();
            let cli = s.as_nobody(&["approvals", "approve", &id]);
            ensure!(cli.status.success(), "{}", stderr(&cli));
            let erin = WebSession::login(&s.web, "erin", s.dir.path())?;
            let (code, body) = web_approve(&s, &erin, &id, json!({}))?;
            ensure!(
                code == 409
                    && body["error"]
                        .as_str()
                        .unwrap_or("")
                        .contains("erin has already approved"),
                "{code} {body}"
            );
            ensure!(s.approval(&id)?["votes"].as_array().unwrap().len() == 1);
            let bob = WebSession::login(&s.web, "bob", s.dir.path())?;
            let (code, body) = web_approve(&s, &bob, &id, json!({}))?;
            ensure!(code == 200 && body["status"] == "approved", "{code} {body}");
            let votes = s.approval(&id)?["votes"].clone();
            ensure!(votes[0]["person"] == "erin", "{votes}");
            Ok(())
        },
    )?;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(s.count("two")?, "1");
    Ok(())
}

#[test]
fn a_standing_grant_is_what_every_approving_vote_chose_and_never_for_unauthenticated_jobs()
-> Result<()> {
    let mut s = Setup::start("enforce", QUORUM_TWO)?;
    s.reconfigure(with_nobody_as_cli_approver)?;

    // root asks for a day, nobody approves once: once it is.
    let out = while_waiting(
        || s.psql(&["-c", "UPDATE orders SET customer = 'first' WHERE id = 1"]),
        || {
            let id = s.pending("'first'")?["id"].as_str().unwrap().to_string();
            let root = s.daemon.cli(&["approvals", "approve", &id, "--for", "24h"]);
            ensure!(root.status.success(), "{}", stderr(&root));
            // What the first vote asked for is on the request before the second approver decides.
            let shown = s.daemon.cli(&["approvals", "show", &id]);
            ensure!(
                stdout(&shown).contains("approved by root for 24h"),
                "{}{}",
                stdout(&shown),
                stderr(&shown)
            );
            let once = s.as_nobody(&["approvals", "approve", &id]);
            ensure!(once.status.success(), "{}", stderr(&once));
            ensure!(
                stdout(&once).contains("approved once")
                    && !stdout(&once).contains("without asking"),
                "{}",
                stdout(&once)
            );
            let decided = s.approval(&id)?;
            ensure!(decided["grant_seconds"].is_null(), "{decided}");
            ensure!(decided["votes"][0]["for_seconds"] == 86400, "{decided}");
            Ok(())
        },
    )?;
    assert!(out.status.success(), "{}", stderr(&out));
    // No grant: the next UPDATE asks again.
    let out = while_waiting(
        || s.psql(&["-c", "UPDATE orders SET customer = 'second' WHERE id = 2"]),
        || {
            let id = s.pending("'second'")?["id"].as_str().unwrap().to_string();
            // Both ask for a duration: the shorter one is granted.
            let root = s.daemon.cli(&["approvals", "approve", &id, "--for", "24h"]);
            ensure!(root.status.success(), "{}", stderr(&root));
            let nobody = s.as_nobody(&["approvals", "approve", &id, "--for", "10m"]);
            ensure!(
                nobody.status.success() && stdout(&nobody).contains("for 10m"),
                "{}{}",
                stdout(&nobody),
                stderr(&nobody)
            );
            ensure!(s.approval(&id)?["grant_seconds"] == 600);
            Ok(())
        },
    )?;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(s.count("second")?, "1");
    let before = s.approvals()?.len();
    let out = s.psql(&["-c", "UPDATE orders SET customer = 'third' WHERE id = 3"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(s.approvals()?.len(), before, "the grant let it pass");

    // Every unauthenticated job shares one identity: no standing approval for it.
    s.reconfigure(|t| {
        t + r#"
[[rules]]
name = "unauthenticated-deletes-need-approval"
action = "require_approval"
approvers = ["dba"]
unauthenticated = true
targets = ["orders-db"]
[rules.sql]
kinds = ["delete"]

[[rules]]
name = "unauthenticated-may-query"
action = "allow"
unauthenticated = true
targets = ["orders-db"]
"#
    })?;
    let out = while_waiting(
        || s.psql_unauthenticated(&["-c", "DELETE FROM orders WHERE customer = 'vole'"]),
        || {
            let request = s.pending("'vole'")?;
            ensure!(
                request["requester"]["subject"] == "unauthenticated",
                "{request}"
            );
            let id = request["id"].as_str().unwrap();
            let out = s.daemon.cli(&["approvals", "approve", id, "--for", "10m"]);
            ensure!(
                !out.status.success() && stderr(&out).contains("unauthenticated"),
                "{}{}",
                stdout(&out),
                stderr(&out)
            );
            ensure!(s.approval(id)?["votes"].as_array().unwrap().is_empty());
            let out = s.daemon.cli(&["approvals", "approve", id]);
            ensure!(out.status.success(), "{}", stderr(&out));
            Ok(())
        },
    )?;
    assert!(out.status.success(), "{}", stderr(&out));
    Ok(())
}

#[test]
fn only_approvers_see_requests_emails_must_be_verified_and_the_person_who_started_the_job_cannot_approve()
-> Result<()> {
    let mut s = Setup::start("enforce", "")?;
    // A group member by email, the old way (in `subjects`).
    s.reconfigure(|t| {
        t.replacen(
            "\"ci-app\"]",
            "\"ci-app\", \"carol\", \"victim@example.test\"]",
            1,
        )
    })?;
    let out = while_waiting(
        || s.psql(&["-c", "DELETE FROM orders WHERE customer = 'zebra'"]),
        || {
            let id = s.pending("'zebra'")?["id"].as_str().unwrap().to_string();
            // Anyone the provider knows can authenticate, but only approvers get a session.
            let dave = WebSession::login(&s.web, "dave", s.dir.path())
                .err()
                .context("dave, in no approver group, got a session")?;
            let why = format!("{dave:#}");
            ensure!(
                why.contains("403") && why.contains("in no approver group"),
                "{why}"
            );
            // Without a session nothing is shown.
            let (code, head, _) = raw_get(&s.web, "/api/approvals", "")?;
            ensure!(code == 401, "{head}");
            // An unverified email is nobody's: not an approver, no session, sees nothing.
            let fake = WebSession::login(&s.web, "unverified-victim", s.dir.path())
                .err()
                .context("an unverified email made an approver")?;
            let why = format!("{fake:#}");
            ensure!(why.contains("in no approver group"), "{why}");
            // carol started the CI job (`actor` in its token): she may not approve it.
            let carol = WebSession::login(&s.web, "carol", s.dir.path())?;
            let (code, body) = web_approve(&s, &carol, &id, json!({}))?;
            ensure!(
                code == 409 && body["error"].as_str().unwrap_or("").contains("own request"),
                "{code} {body}"
            );
            ensure!(s.approval(&id)?["votes"].as_array().unwrap().is_empty());
            let out = s.daemon.cli(&["approvals", "deny", &id]);
            ensure!(out.status.success(), "{}", stderr(&out));
            Ok(())
        },
    )?;
    assert!(!out.status.success());

    // Emails in their own key, verified only; carol's Unix account is hers too.
    s.reconfigure(|t| {
        with_people(
            with_nobody_as_cli_approver(t).replacen(", \"victim@example.test\"]", "]\nemails = [\"victim@example.test\"]", 1),
            "[[approvers.people]]\nname = \"carol\"\nunix_users = [\"nobody\"]\nsubjects = [\"carol\"]",
        )
    })?;
    let out = while_waiting(
        || s.psql(&["-c", "DELETE FROM orders WHERE customer = 'yak'"]),
        || {
            let id = s.pending("'yak'")?["id"].as_str().unwrap().to_string();
            let victim = WebSession::login(&s.web, "victim", s.dir.path())?;
            let (code, body) = victim.get("/api/approvals")?;
            ensure!(code == 200 && body.contains("'yak'"), "{code} {body}");
            ensure!(WebSession::login(&s.web, "unverified-victim", s.dir.path()).is_err());
            let cli = s.as_nobody(&["approvals", "approve", &id]);
            ensure!(
                !cli.status.success() && stderr(&cli).contains("own request"),
                "{}{}",
                stdout(&cli),
                stderr(&cli)
            );
            let (code, body) = web_approve(&s, &victim, &id, json!({}))?;
            ensure!(code == 200 && body["status"] == "approved", "{code} {body}");
            Ok(())
        },
    )?;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(s.count("yak")?, "0");
    Ok(())
}

/// Characters a job can use to make text look like something else on a terminal or a page.
const HIDDEN: [char; 5] = ['\u{1b}', '\u{7}', '\u{202e}', '\u{200b}', '\u{85}'];

fn assert_visible(what: &str, text: &str) {
    for c in HIDDEN {
        assert!(
            !text.contains(c),
            "{what} shows U+{:04X} as it is:\n{text}",
            c as u32
        );
    }
}

#[test]
fn what_the_approver_sees_is_what_runs_with_hidden_characters_shown_everywhere() -> Result<()> {
    let s = Setup::start("enforce", "")?;
    // Clears the screen and sets root's window title, reverses the text direction, hides a word.
    let sql = "DELETE FROM orders WHERE customer = 'zebra' /* \u{1b}[2J\u{1b}]0;owned\u{7} \u{202e}lla\u{202c} zero\u{200b}width \u{85} */ AND id > 0 AND customer <> 'a tail well past the first sixty characters'";
    let out = while_waiting(
        || s.psql(&["-c", sql]),
        || {
            let request = s.pending("'zebra'")?;
            let id = request["id"].as_str().unwrap().to_string();
            // The CLI list, as root's terminal gets it.
            let list = s.daemon.cli(&["approvals", "list"]);
            ensure!(list.status.success(), "{}", stderr(&list));
            assert_visible("approvals list", &stdout(&list));
            ensure!(
                stdout(&list).contains("\\x1b[2J") && stdout(&list).contains("chars)"),
                "the list shows the escape and says how much it cut: {}",
                stdout(&list)
            );
            // The whole operation, parameters and process.
            let show = s.daemon.cli(&["approvals", "show", &id]);
            ensure!(show.status.success(), "{}", stderr(&show));
            let text = stdout(&show);
            assert_visible("approvals show", &text);
            for part in [
                "\\x1b[2J",
                "\\x07",
                "\\u{202e}lla\\u{202c}",
                "zero\\u{200b}width",
                "well past the first sixty characters'",
                "psql",
                "verified",
            ] {
                ensure!(text.contains(part), "{part:?} missing from:\n{text}");
            }
            let json = s.daemon.cli_json(&["approvals", "show", &id, "--json"])?;
            ensure!(
                json["operation"] == sql,
                "machines get it unchanged: {json}"
            );
            // The page's data, as an approver's browser gets it.
            let alice = WebSession::login(&s.web, "alice", s.dir.path())?;
            let (code, body) = alice.get("/api/approvals")?;
            ensure!(code == 200, "{code} {body}");
            let page: Value = serde_json::from_str(&body)?;
            let shown = page
                .as_array()
                .unwrap()
                .iter()
                .find(|a| a["id"] == id.as_str())
                .context("request on the page")?;
            assert_visible("the page", shown["operation"].as_str().unwrap());
            assert_visible(
                "the page",
                &shown["detail"]["process"]["cmdline"].to_string(),
            );
            ensure!(
                shown["operation"].as_str().unwrap().contains("\\u{202e}"),
                "{shown}"
            );
            let out = s.daemon.cli(&["approvals", "approve", &id]);
            ensure!(out.status.success(), "{}", stderr(&out));
            // The decision names what was approved, visibly.
            assert_visible("approvals approve", &stdout(&out));
            Ok(())
        },
    )?;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(s.count("zebra")?, "0");
    // The session as root reads it.
    let session = s.approvals()?[0]["session_id"].to_string();
    let shown = s.daemon.cli(&["sessions", "show", &session]);
    assert!(shown.status.success(), "{}", stderr(&shown));
    assert_visible("sessions show", &stdout(&shown));
    assert!(stdout(&shown).contains("\\u{202e}"), "{}", stdout(&shown));
    // Webhook text (chat clients render it for people).
    assert!(wait_until(Duration::from_secs(10), || s
        .hooks
        .events()
        .len()
        >= 2));
    for hook in s.hooks.events() {
        assert_visible("webhook text", hook["text"].as_str().unwrap());
    }
    Ok(())
}

/// One HTTP/1.1 GET over a fresh connection; the status code and the still open stream.
fn raw_get(base: &str, path: &str, cookie: &str) -> Result<(u16, String, std::net::TcpStream)> {
    let addr = base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nCookie: {cookie}\r\nConnection: keep-alive\r\n\r\n"
    )?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
        if stream.read(&mut byte)? == 0 {
            break;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no status in {head:?}"))?;
    Ok((code, head, stream))
}

/// The `gw_login` cookie a `/login` answer sets.
fn login_cookie(head: &str) -> Result<String> {
    head.lines()
        .find_map(|l| l.strip_prefix("set-cookie: gw_login="))
        .and_then(|v| v.split(';').next())
        .map(str::to_string)
        .with_context(|| format!("no login cookie in {head}"))
}

/// What `/callback` says for a sign-in cookie with a wrong state.
fn callback_answer(base: &str, login: &str) -> Result<String> {
    let (_, _, mut stream) = raw_get(
        base,
        "/callback?code=x&state=not-the-state",
        &format!("gw_login={login}"),
    )?;
    let mut body = [0u8; 512];
    let n = stream.read(&mut body)?;
    Ok(String::from_utf8_lossy(&body[..n]).into_owned())
}

#[test]
fn the_page_bounds_sign_ins_in_progress_and_event_streams() -> Result<()> {
    const MAX_LOGINS: usize = 1024;
    const MAX_STREAMS_PER_SESSION: usize = 4;
    const MAX_STREAMS: usize = 32;
    let s = Setup::start("enforce", "")?;
    // A sign-in followed by MAX_LOGINS - 1 more is still there (its state is checked) ...
    let (code, head, _) = raw_get(&s.web, "/login", "")?;
    assert_eq!(code, 303, "{head}");
    let first = login_cookie(&head)?;
    for _ in 1..MAX_LOGINS {
        raw_get(&s.web, "/login", "")?;
    }
    let answer = callback_answer(&s.web, &first)?;
    assert!(answer.contains("state mismatch"), "{answer}");
    // ... one followed by MAX_LOGINS more is gone: the oldest make room.
    let (_, head, _) = raw_get(&s.web, "/login", "")?;
    let second = login_cookie(&head)?;
    for _ in 0..MAX_LOGINS {
        let (code, head, _) = raw_get(&s.web, "/login", "")?;
        assert_eq!(code, 303, "every sign-in may start: {head}");
    }
    let answer = callback_answer(&s.web, &second)?;
    assert!(answer.contains("no sign-in in progress"), "{answer}");
    // A person can still sign in after the flood.
    let alice = WebSession::login(&s.web, "alice", s.dir.path())?;

    // Live updates: a few streams per signed-in person, a bounded number in all.
    let cookie = format!("gw_session={}", alice.cookie()?);
    let mut open = Vec::new();
    for _ in 0..MAX_STREAMS_PER_SESSION {
        let (code, head, stream) = raw_get(&s.web, "/api/events", &cookie)?;
        assert_eq!(code, 200, "{head}");
        open.push(stream);
    }
    let (code, head, _) = raw_get(&s.web, "/api/events", &cookie)?;
    assert_eq!(code, 429, "one more stream for the same person: {head}");
    let mut people = Vec::new();
    while open.len() < MAX_STREAMS {
        let who = WebSession::login(&s.web, "bob", s.dir.path())?;
        let cookie = format!("gw_session={}", who.cookie()?);
        for _ in 0..MAX_STREAMS_PER_SESSION.min(MAX_STREAMS - open.len()) {
            let (code, head, stream) = raw_get(&s.web, "/api/events", &cookie)?;
            assert_eq!(code, 200, "{head}");
            open.push(stream);
        }
        people.push(who);
    }
    let late = WebSession::login(&s.web, "bob", s.dir.path())?;
    let (code, head, _) = raw_get(
        &s.web,
        "/api/events",
        &format!("gw_session={}", late.cookie()?),
    )?;
    assert_eq!(code, 503, "one stream more than the page serves: {head}");
    // Closed streams give their places back.
    drop(open);
    assert!(
        wait_until(Duration::from_secs(60), || {
            raw_get(
                &s.web,
                "/api/events",
                &format!("gw_session={}", late.cookie().unwrap_or_default()),
            )
            .is_ok_and(|(code, _, _)| code == 200)
        }),
        "places were not given back"
    );
    Ok(())
}
