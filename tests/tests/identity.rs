//! Job identity end to end: a real OIDC issuer (npm `oidc-provider`) on loopback over HTTPS with a
//! CA made by the test, tokens bound to jobs by `gateway run` / `gateway attach`, rules that tell
//! identities apart, bad tokens refused with one clear line, and key rotation picked up live.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::Path,
    process::{Command, Output},
    time::{Duration, Instant},
};

use anyhow::Result;
use base64::Engine as _;
use gateway_e2e::{
    Daemon, DaemonConfig, EchoServer, Netns, Postgres, TempDir, TestCgroup, gateway_bin,
    oidc::{Issuer, Mode, SigningKey, Silent, chrono_now},
    unique_id, wait_until,
};
use serde_json::{Value, json};

/// The audience the issuer's access tokens carry (its `resource` default).
const AUDIENCE: &str = "https://gateway.test";
/// Shortest cooldown the config allows in whole seconds; tests wait it out, never race it.
const COOLDOWN: Duration = Duration::from_secs(1);

fn issuer_toml(url: &str, ca: Option<&Path>, extra: &str) -> String {
    let ca = ca.map_or_else(String::new, |p| format!("ca_file = \"{}\"\n", p.display()));
    format!(
        "[[issuers]]\nurl = \"{url}\"\naudiences = [\"{AUDIENCE}\", \"web-approvals\"]\n{ca}fetch_timeout = \"2s\"\njwks_refetch_cooldown = \"1s\"\n{extra}\n"
    )
}

fn real_issuer_toml(issuer: &Issuer, extra: &str) -> String {
    issuer_toml(&issuer.url, Some(&issuer.tls.ca), extra)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn attach(daemon: &Daemon, cg: &TestCgroup, token_file: &Path) -> Output {
    daemon.cli(&[
        "attach",
        "--cgroup",
        cg.path.to_str().unwrap(),
        "--token-file",
        token_file.to_str().unwrap(),
        "--json",
    ])
}

fn jobs(daemon: &Daemon) -> Result<Vec<Value>> {
    Ok(daemon.cli_json(&["status", "--json"])?["jobs"]
        .as_array()
        .cloned()
        .unwrap_or_default())
}

fn b64(v: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

#[test]
fn two_identities_same_target_rules_let_one_through_and_both_are_recorded() -> Result<()> {
    let id = unique_id();
    let dir = TempDir::new(&format!("i{id}"));
    let ns = Netns::new(&id)?;
    let pg = Postgres::start(&ns, dir.path())?;
    let issuer = Issuer::start(dir.path(), Mode::Real)?;
    let body = format!(
        r#"{issuers}
[[targets]]
name = "orders-db"
protocol = "tcp"
address = "{pg}:5432"

[[rules]]
name = "acme-main-may-query"
action = "allow"
targets = ["orders-db"]
claims = {{ repository = "acme/app", ref = "refs/heads/main", groups = ["sre-*", "deployers"] }}

[[rules]]
name = "others-denied"
action = "deny"
targets = ["orders-db"]
reason = "only acme/app on main may reach orders-db"
"#,
        issuers = real_issuer_toml(&issuer, ""),
        pg = pg.host,
    );
    let daemon = Daemon::start(DaemonConfig {
        server: String::new(),
        body,
    })?;

    let app_token = dir.path().join("app.jwt");
    std::fs::write(&app_token, issuer.client_token("ci-app")?)?;
    let fork_token = issuer.client_token("ci-fork")?;

    let psql = |run_args: &[&str], env: &[(&str, &str)]| {
        let mut cmd = Command::new(gateway_bin());
        cmd.arg("--control-socket")
            .arg(&daemon.control_socket)
            .arg("run")
            .args(run_args)
            .args([
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
            .arg("select 'hello from ' || current_user")
            .env("PGPASSWORD", "apppw")
            .env("PGCONNECT_TIMEOUT", "10");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("gateway run psql")
    };

    // acme/app on main: allowed.
    let out = psql(&["--token-file", app_token.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "hello from app"
    );

    // mallory/fork: same target, refused by the rules (the connection is reset).
    let out = psql(
        &["--token-env", "GW_TEST_TOKEN"],
        &[("GW_TEST_TOKEN", &fork_token)],
    );
    assert!(
        !out.status.success(),
        "the fork's job must not reach orders-db"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("hello"));

    let sessions = daemon.sessions()?;
    assert_eq!(sessions.len(), 2, "{sessions:?}");
    let allowed = &sessions[0];
    assert_eq!(allowed["identity"], "ci-app", "{allowed}");
    assert_eq!(allowed["issuer"], issuer.url.as_str());
    assert_eq!(allowed["decision"], "allow");
    assert_eq!(allowed["rule"], "acme-main-may-query");
    assert_eq!(allowed["target"], "orders-db");
    assert_eq!(allowed["comm"], "psql");
    let denied = &sessions[1];
    assert_eq!(denied["identity"], "ci-fork", "{denied}");
    assert_eq!(denied["issuer"], issuer.url.as_str());
    assert_eq!(denied["decision"], "deny");
    assert_eq!(denied["rule"], "others-denied");

    // The full record keeps the claims the decision was made on.
    let shown = daemon.show_session(&denied["id"])?;
    assert_eq!(shown["claims"]["repository"], "mallory/fork", "{shown}");
    assert_eq!(shown["claims"]["aud"], AUDIENCE);
    assert_eq!(shown["reason"], "only acme/app on main may reach orders-db");
    let shown = daemon.show_session(&allowed["id"])?;
    assert_eq!(shown["claims"]["ref"], "refs/heads/main", "{shown}");
    Ok(())
}

#[test]
fn attach_binds_a_cgroup_to_an_id_token_and_status_shows_it() -> Result<()> {
    let dir = TempDir::new(&format!("a{}", unique_id()));
    let issuer = Issuer::start(dir.path(), Mode::Real)?;
    let daemon = Daemon::start(DaemonConfig {
        server: String::new(),
        body: real_issuer_toml(&issuer, "max_binding_lifetime = \"2h\""),
    })?;
    // An ID token from the authorization-code flow (aud = the client id, sub = the user).
    let token = dir.path().join("id.jwt");
    std::fs::write(&token, issuer.id_token("alice")?)?;
    let cg = TestCgroup::new("idt")?;
    let out = attach(&daemon, &cg, &token);
    assert!(out.status.success(), "{}", stderr(&out));
    let job: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(job["identity"]["subject"], "alice");
    assert_eq!(job["identity"]["issuer"], issuer.url.as_str());
    assert_eq!(job["identity"]["claims"]["aud"], "web-approvals");

    let status = daemon.cli_json(&["status", "--json"])?;
    let listed = &status["jobs"][0];
    assert_eq!(listed["identity"]["subject"], "alice", "{status}");
    // Bound for max_binding_lifetime, far beyond the ID token's own exp.
    let until = listed["binding_expires_at"].as_str().unwrap();
    let token_exp = job["identity"]["claims"]["exp"].as_i64().unwrap();
    let until_secs = chrono_from_rfc3339(until);
    assert!(until_secs > token_exp, "{until} vs exp {token_exp}");
    assert!(until_secs > chrono_now() + 3600 && until_secs <= chrono_now() + 7200);
    assert_eq!(status["issuers"][0]["url"], issuer.url.as_str());
    assert!(
        status["issuers"][0]["keys"].as_u64().unwrap() >= 1,
        "{status}"
    );

    let text = daemon.cli(&["status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("alice") && text.contains(&issuer.url),
        "{text}"
    );

    let out = daemon.cli(&["detach", "--cgroup", cg.path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(jobs(&daemon)?.is_empty());
    Ok(())
}

fn chrono_from_rfc3339(t: &str) -> i64 {
    // 2026-11-25T23:59:01.123Z: date -d is the simplest exact parser at hand.
    let out = Command::new("date")
        .args(["-u", "-d", t, "+%s"])
        .output()
        .expect("date");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[test]
fn bad_tokens_are_refused_with_one_clear_line_and_bind_nothing() -> Result<()> {
    let dir = TempDir::new(&format!("b{}", unique_id()));
    let issuer = Issuer::start(dir.path(), Mode::Real)?;
    let junk_discovery = Issuer::start(dir.path(), Mode::JunkDiscovery)?;
    let junk_jwks = Issuer::start(dir.path(), Mode::JunkJwks)?;
    let silent = Silent::start()?;
    let down = format!("https://127.0.0.1:{}", {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    });
    let body = [
        real_issuer_toml(&issuer, ""),
        real_issuer_toml(&junk_discovery, ""),
        real_issuer_toml(&junk_jwks, ""),
        issuer_toml(&silent.url, None, ""),
        issuer_toml(&down, None, ""),
    ]
    .join("\n");
    let daemon = Daemon::start(DaemonConfig {
        server: String::new(),
        body,
    })?;
    let cg = TestCgroup::new("bad")?;

    // A genuine token binds (so the refusals below are about the tokens, not the setup); the
    // first fetch of the issuer's keys happens here.
    let good = dir.path().join("good.jwt");
    let genuine = issuer.client_token("ci-app")?;
    std::fs::write(&good, &genuine)?;
    let out = attach(&daemon, &cg, &good);
    assert!(out.status.success(), "{}", stderr(&out));
    let fetched_at = Instant::now();
    let out = daemon.cli(&["detach", "--cgroup", cg.path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));

    let key = issuer.current_key();
    let claims = issuer.claims(AUDIENCE);
    let with = |patch: Value| {
        let mut c = claims.clone();
        for (k, v) in patch.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let now = chrono_now();
    let rogue = SigningKey::generate(dir.path(), "k-rogue")?;
    let parts: Vec<&str> = genuine.split('.').collect();
    let mut payload: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(parts[1])?,
    )?;
    payload["repository"] = json!("acme/secrets");
    let tampered = format!("{}.{}.{}", parts[0], b64(&payload), parts[2]);
    let hs256 = {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = Some(key.kid.clone());
        jsonwebtoken::encode(
            &header,
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(&key.public_pem()?),
        )?
    };
    let unavailable = |url: &str| key.sign(&with(json!({ "iss": url })));

    let cases: Vec<(&str, String, String)> = vec![
        (
            "expired",
            key.sign(&with(json!({"iat": now - 7200, "exp": now - 3600})))?,
            "token rejected: expired at".into(),
        ),
        (
            "not yet valid",
            key.sign(&with(json!({"nbf": now + 3600})))?,
            "token rejected: not valid before".into(),
        ),
        (
            "wrong issuer",
            key.sign(&with(json!({"iss": "https://evil.example"})))?,
            "issuer \"https://evil.example\" is not configured".into(),
        ),
        (
            "wrong audience",
            key.sign(&with(json!({"aud": "https://someone-else.test"})))?,
            "audience \"https://someone-else.test\" is not accepted".into(),
        ),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(&json!({"alg": "none", "typ": "JWT"})),
                b64(&claims)
            ),
            "algorithm \"none\" is never accepted".into(),
        ),
        (
            "HS256 keyed with the public key",
            hs256,
            "symmetric algorithm HS256 is never accepted".into(),
        ),
        (
            "tampered payload",
            tampered,
            "signature does not verify".into(),
        ),
        (
            "truncated",
            genuine[..genuine.len() / 2].to_string(),
            "not a JWT".into(),
        ),
        ("garbage", "this is not a token".into(), "not a JWT".into()),
        (
            "issuer down",
            unavailable(&down)?,
            format!("issuer {down} unavailable"),
        ),
        (
            "issuer hangs",
            unavailable(&silent.url)?,
            format!("issuer {} unavailable", silent.url),
        ),
        (
            "discovery is junk",
            unavailable(&junk_discovery.url)?,
            "not a valid discovery document".into(),
        ),
        (
            "JWKS is junk",
            unavailable(&junk_jwks.url)?,
            "not a valid JWKS".into(),
        ),
    ];
    for (name, token, expected) in &cases {
        let file = dir.path().join("bad.jwt");
        std::fs::write(&file, token)?;
        let out = attach(&daemon, &cg, &file);
        let err = stderr(&out);
        eprintln!("{name}: {}", err.trim_end());
        assert_eq!(out.status.code(), Some(1), "{name}: {err}");
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "{name}: not one line: {err}"
        );
        assert!(
            err.contains(expected),
            "{name}: expected {expected:?} in: {err}"
        );
        assert!(
            !err.contains(token.as_str()) || token.len() < 30,
            "{name}: the token is echoed"
        );
    }

    // A kid the issuer does not publish is refused after one refetch of the JWKS (waited out
    // the refetch cooldown first, so the refetch is certain to happen).
    std::thread::sleep(COOLDOWN.saturating_sub(fetched_at.elapsed()) + Duration::from_millis(200));
    let file = dir.path().join("rogue.jwt");
    std::fs::write(&file, rogue.sign(&claims)?)?;
    let err = stderr(&attach(&daemon, &cg, &file));
    assert!(
        err.contains("publishes no key \"k-rogue\"") && err.contains("refetched just now"),
        "{err}"
    );

    // Over 16 KiB: the CLI refuses to send it, and the daemon refuses it unparsed when sent anyway.
    let big = format!(
        "{}.{}.sig",
        b64(&json!({"alg": "RS256"})),
        "A".repeat(17 * 1024)
    );
    std::fs::write(&file, &big)?;
    let err = stderr(&attach(&daemon, &cg, &file));
    assert!(err.contains("larger than 16 KiB"), "{err}");
    let answer = raw_request(
        &daemon,
        &json!({"op": "attach", "cgroup": cg.path.to_str().unwrap(), "token": big}),
    )?;
    assert!(
        answer["message"]
            .as_str()
            .unwrap_or("")
            .contains("larger than the 16384-byte limit"),
        "{answer}"
    );

    // `gateway run` with a bad token never starts the command.
    let marker = dir.path().join("ran");
    std::fs::write(&file, &cases[0].1)?;
    let out = daemon.run_job(
        &["--token-file", file.to_str().unwrap()],
        "touch",
        &[marker.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("expired at"), "{}", stderr(&out));
    assert!(
        !marker.exists(),
        "the command ran although its token was refused"
    );

    assert!(jobs(&daemon)?.is_empty(), "a refused token bound a job");
    // The issuers that failed are shown with their errors; the daemon kept serving throughout.
    let status = daemon.cli_json(&["status", "--json"])?;
    let broken = status["issuers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["last_error"].is_string())
        .count();
    assert_eq!(broken, 4, "{status}");
    Ok(())
}

/// One control request written by hand (to bypass the CLI's own checks).
fn raw_request(daemon: &Daemon, request: &Value) -> Result<Value> {
    let mut stream = UnixStream::connect(&daemon.control_socket)?;
    stream.write_all(format!("{request}\n").as_bytes())?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    Ok(serde_json::from_str(&line)?)
}

#[test]
fn key_rotation_at_the_issuer_is_picked_up_without_a_restart() -> Result<()> {
    let dir = TempDir::new(&format!("r{}", unique_id()));
    let mut issuer = Issuer::start(dir.path(), Mode::Real)?;
    let daemon = Daemon::start(DaemonConfig {
        server: String::new(),
        body: real_issuer_toml(&issuer, ""),
    })?;
    let pid = daemon.pid();
    let before = TestCgroup::new("rot1")?;
    let file = dir.path().join("t.jwt");
    std::fs::write(&file, issuer.client_token("ci-app")?)?;
    let out = attach(&daemon, &before, &file);
    assert!(out.status.success(), "{}", stderr(&out));
    let fetched_at = Instant::now();

    issuer.rotate("k2")?;
    let rotated = issuer.client_token("ci-app")?;
    let header: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(rotated.split('.').next().unwrap())?,
    )?;
    assert_eq!(header["kid"], "k2", "the issuer signs with the new key");

    // The gateway has only k1 cached: the unknown kid triggers one refetch (after the cooldown).
    std::thread::sleep(COOLDOWN.saturating_sub(fetched_at.elapsed()) + Duration::from_millis(200));
    let after = TestCgroup::new("rot2")?;
    std::fs::write(&file, &rotated)?;
    let out = attach(&daemon, &after, &file);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(daemon.pid(), pid, "the gateway was not restarted");
    assert_eq!(jobs(&daemon)?.len(), 2);
    assert_eq!(
        daemon.log().matches("fetched issuer keys").count(),
        2,
        "{}",
        daemon.log()
    );
    Ok(())
}

#[test]
fn a_binding_past_its_maximum_lifetime_is_refused_not_downgraded() -> Result<()> {
    let id = unique_id();
    let dir = TempDir::new(&format!("x{id}"));
    let ns = Netns::new(&id)?;
    let _echo = EchoServer::start(&ns, dir.path(), &[format!("{}:7000", ns.remote_ip)])?;
    // Two providers: jobs bound through `short` expire after 2s, through `long` after the default.
    let short = Issuer::start(dir.path(), Mode::Real)?;
    let long = Issuer::start(dir.path(), Mode::Real)?;
    let body = format!(
        r#"{short}
{long}
[[targets]]
name = "echo"
protocol = "tcp"
address = "{ip}:7000"

[[rules]]
name = "acme"
action = "allow"
claims = {{ repository = "acme/app" }}

# Were an expired binding downgraded to `unauthenticated`, this rule would let it through.
[[rules]]
name = "anyone"
action = "allow"
unauthenticated = true
"#,
        short = real_issuer_toml(&short, "max_binding_lifetime = \"2s\""),
        long = real_issuer_toml(&long, ""),
        ip = ns.remote_ip,
    );
    let daemon = Daemon::start(DaemonConfig {
        server: String::new(),
        body,
    })?;
    let file = dir.path().join("t.jwt");
    std::fs::write(&file, short.client_token("ci-app")?)?;
    let cg = TestCgroup::new("exp")?;
    let out = attach(&daemon, &cg, &file);
    assert!(out.status.success(), "{}", stderr(&out));
    let job: Value = serde_json::from_slice(&out.stdout)?;
    let until = chrono_from_rfc3339(job["binding_expires_at"].as_str().unwrap());

    // Wait (by the clock, not by a guess) until the binding has run out.
    while chrono_now() <= until {
        std::thread::sleep(Duration::from_millis(200));
    }
    let v = cg.probe(&["connect", &format!("{}:7000", ns.remote_ip), "late"])?;
    assert_ne!(
        v["echo"], "late",
        "an expired binding reached the target: {v}"
    );
    let sessions = daemon.sessions()?;
    let s = sessions.last().unwrap();
    assert_eq!(s["decision"], "deny", "{s}");
    assert_eq!(
        s["identity"], "ci-app",
        "the record keeps who the job was: {s}"
    );
    let shown = daemon.show_session(&s["id"])?;
    assert!(
        shown["reason"]
            .as_str()
            .unwrap()
            .contains("identity binding of job"),
        "{shown}"
    );

    // Control: a job bound with the same claims through `long` is let through by the same rules.
    let fresh = TestCgroup::new("fresh")?;
    std::fs::write(&file, long.client_token("ci-app")?)?;
    let out = attach(&daemon, &fresh, &file);
    assert!(out.status.success(), "{}", stderr(&out));
    let v = fresh.probe(&["connect", &format!("{}:7000", ns.remote_ip), "fresh"])?;
    assert_eq!(v["echo"], "fresh", "{v}");
    Ok(())
}

#[test]
fn a_kernel_path_grant_is_compiled_from_the_identity_and_runs_out_with_its_binding() -> Result<()> {
    // `path = "kernel"`: the decision is made in the kernel from grants compiled when the job is
    // bound. Claims select the rule there as on the proxy path, and the grant carries the
    // binding's end: past it the kernel refuses, and does not fall back to the rules for
    // unauthenticated jobs either.
    let id = unique_id();
    let dir = TempDir::new(&format!("x{id}"));
    let ns = Netns::new(&id)?;
    let dst = format!("{}:7000", ns.remote_ip);
    let echo = EchoServer::start(&ns, dir.path(), std::slice::from_ref(&dst))?;
    let short = Issuer::start(dir.path(), Mode::Real)?;
    let long = Issuer::start(dir.path(), Mode::Real)?;
    let body = format!(
        r#"{short}
{long}
[[targets]]
name = "echo"
protocol = "tcp"
path = "kernel"
address = "{dst}"

[[rules]]
name = "acme"
action = "allow"
claims = {{ repository = "acme/app" }}

[[rules]]
name = "anyone"
action = "allow"
unauthenticated = true
"#,
        short = real_issuer_toml(&short, "max_binding_lifetime = \"2s\""),
        long = real_issuer_toml(&long, ""),
    );
    let daemon = Daemon::start(DaemonConfig {
        server: String::new(),
        body,
    })?;
    let file = dir.path().join("t.jwt");

    std::fs::write(&file, long.client_token("ci-app")?)?;
    let bound = TestCgroup::new("kbound")?;
    let out = attach(&daemon, &bound, &file);
    assert!(out.status.success(), "{}", stderr(&out));
    let v = bound.probe(&["connect", &dst, "granted"])?;
    assert_eq!(v["echo"], "granted", "{v}");
    // Straight to the destination: the job's own address, not the gateway's.
    assert_eq!(v["peer"], dst.as_str(), "{v}");

    std::fs::write(&file, short.client_token("ci-app")?)?;
    let expiring = TestCgroup::new("kexp")?;
    let out = attach(&daemon, &expiring, &file);
    assert!(out.status.success(), "{}", stderr(&out));
    let job: Value = serde_json::from_slice(&out.stdout)?;
    let until = chrono_from_rfc3339(job["binding_expires_at"].as_str().unwrap());
    while chrono_now() <= until {
        std::thread::sleep(Duration::from_millis(200));
    }
    let accepted = echo.accepted().len();
    let v = expiring.probe(&["connect", &dst, "late"])?;
    assert_eq!(
        v["errno"],
        libc::EPERM,
        "an expired binding reached the target: {v}"
    );
    assert_eq!(echo.accepted().len(), accepted);

    let recorded = wait_until(Duration::from_secs(10), || {
        daemon.sessions().is_ok_and(|l| l.len() == 2)
    });
    let sessions = daemon.sessions()?;
    assert!(recorded, "{sessions:?}");
    let allowed = sessions
        .iter()
        .find(|s| s["decision"] == "allow")
        .expect("allowed session");
    assert_eq!(
        (&allowed["path"], &allowed["rule"], &allowed["identity"]),
        (&json!("kernel"), &json!("acme"), &json!("ci-app")),
        "{allowed}"
    );
    let denied = sessions
        .iter()
        .find(|s| s["decision"] == "deny")
        .expect("denied session");
    assert_eq!(
        (&denied["path"], &denied["identity"]),
        (&json!("kernel"), &json!("ci-app")),
        "{denied}"
    );
    let shown = daemon.show_session(&denied["id"])?;
    assert!(
        shown["reason"]
            .as_str()
            .is_some_and(|r| r.contains("identity binding of job")),
        "{shown}"
    );
    Ok(())
}
