//! The PostgreSQL layer against a hostile job: a client that speaks the wire protocol by hand and
//! tries to get a statement past policy, a covered value past masking, the gateway's memory past
//! its bounds, or the target's password to a server of its own. Each test is an attack that
//! worked against an earlier build, with what the server really did checked from outside the
//! gateway (as the superuser).

use anyhow::Result;
use gateway_e2e::pg::{APP, Pg, admin, stderr, stdout};
use serde_json::{Value, json};

/// Statement rules of these tests: DELETE is denied outright, `secrets` may not be touched,
/// procedures named `wipe*` may not be called; masking covers `users.ssn` and `users.pin` (and
/// `hr.staff.ssn`), with the email detector.
const RULES: &str = r#"
[[rules]]
name = "no-delete"
action = "deny"
targets = ["app-db"]
unauthenticated = true
[rules.sql]
kinds = ["delete"]

[[rules]]
name = "no-secrets"
action = "deny"
targets = ["app-db"]
unauthenticated = true
[rules.sql]
tables = ["secrets", "vault.*"]

[[rules]]
name = "no-wipe"
action = "deny"
targets = ["app-db"]
unauthenticated = true
[rules.sql]
functions = ["wipe*"]

[[approvers]]
name = "dba"
unix_users = ["root"]

[[rules]]
name = "updates-need-approval"
action = "require_approval"
approvers = ["dba"]
approval_timeout = "20s"
targets = ["app-db"]
unauthenticated = true
[rules.sql]
kinds = ["update"]

[[rules]]
name = "jobs"
action = "allow"
targets = ["app-db"]
unauthenticated = true

[[masking]]
name = "pii"
targets = ["app-db"]
columns = ["users.ssn", "users.pin", "hr.staff.ssn"]
detectors = ["email"]
"#;

const SETUP: &str = "
create role admin;
grant admin to app;
create table secrets (id int, v text);
insert into secrets values (1, 'the launch code');
alter table secrets owner to app;
insert into notes (body) values ('write to dave@example.com');
create schema hr authorization app;
create table hr.staff (id int, ssn text);
insert into hr.staff values (1, '555-66-7777');
alter table hr.staff owner to app;
create procedure public.wipe_users() language sql as 'delete from users';
create function public.shout(t text) returns void language plpgsql as $$ begin raise notice 'shout: %', t; end $$;
create function public.lax() returns void language sql as $$ select set_config('standard_conforming_strings', 'off', false) $$;
";

fn fixture() -> Result<Pg> {
    Pg::custom(APP, "", RULES, SETUP)
}

fn messages(r: &Value) -> Vec<Value> {
    r["messages"].as_array().cloned().unwrap_or_default()
}

fn errors(r: &Value) -> Vec<(String, String)> {
    messages(r)
        .iter()
        .filter(|m| m["tag"] == "E")
        .map(|m| {
            (
                m["code"].as_str().unwrap_or_default().to_string(),
                m["message"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn rows(r: &Value) -> Vec<Vec<Value>> {
    messages(r)
        .iter()
        .filter(|m| m["tag"] == "D")
        .map(|m| m["values"].as_array().cloned().unwrap_or_default())
        .collect()
}

fn users_left(t: &Pg) -> Result<String> {
    admin(&t.pg, "select count(*) from users")
}

const SSNS: [&str; 3] = ["123-45-6789", "987-65-4321", "111-22-3333"];

/// Every SSN the answer or the recording could carry, looked for in `text`.
fn leaks_ssn(text: &str) -> bool {
    SSNS.iter().any(|s| text.contains(s))
}

#[test]
fn statements_cannot_be_smuggled_by_changing_how_the_server_lexes() -> Result<()> {
    let t = fixture()?;
    // standard_conforming_strings off turns `'a\'` into an unterminated string, hiding a DELETE
    // from a classifier that reads with it on.
    let smuggle = r"SELECT 'a\', '; DELETE FROM users WHERE id=1; --'";
    let r = t.script(json!([
        {"Q": "SET standard_conforming_strings = off"}, {"read": "Z"},
        {"Q": smuggle}, {"read": "Z"},
        {"Q": "SELECT set_config('standard_conforming_strings', 'off', false)"}, {"read": "Z"},
        {"Q": "SET client_encoding = 'GBK'"}, {"read": "Z"},
        {"Q": "SELECT set_config('client_encoding', 'SJIS', false)"}, {"read": "Z"},
        // GBK swallows the backslash after 中: E'中\' ends there for the server.
        {"Q": "SELECT E'中\\'; DELETE FROM users WHERE id=2; --'"}, {"read": "Z"},
    ]))?;
    let e = errors(&r);
    assert_eq!(e.len(), 6, "every attempt refused: {r}");
    assert!(e.iter().all(|(code, _)| code == "42501"), "{e:?}");
    assert!(e[0].1.contains("standard_conforming_strings"), "{e:?}");
    assert!(e[1].1.contains("would mean something else"), "{e:?}");
    assert!(e[3].1.contains("client_encoding"), "{e:?}");
    assert_eq!(users_left(&t)?, "3", "nothing was deleted");

    // At startup: PGOPTIONS and PGCLIENTENCODING are refused before any statement.
    let out = t.job_env(
        "psql",
        &[
            "-X",
            "-At",
            "-h",
            &t.host(),
            "-U",
            "agent",
            "-d",
            "app",
            "-c",
            smuggle,
        ],
        &[("PGOPTIONS", "-c standard_conforming_strings=off")],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("standard_conforming_strings"),
        "{}",
        stderr(&out)
    );
    let out = t.job_env(
        "psql",
        &[
            "-X",
            "-At",
            "-h",
            &t.host(),
            "-U",
            "agent",
            "-d",
            "app",
            "-c",
            "select 1",
        ],
        &[("PGCLIENTENCODING", "GBK")],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("GBK"), "{}", stderr(&out));

    // Server-side code (a function the DBA owns) switches it anyway, with the smuggling text
    // pipelined right behind: the text is refused for reading two ways, and the session ends
    // when the server reports the change.
    let r = t.script(json!([
        {"Q": "SELECT lax()"}, {"Q": smuggle}, {"read": "all"},
    ]))?;
    assert!(r["closed"].as_bool().unwrap_or(false), "{r}");
    assert_eq!(users_left(&t)?, "3", "nothing was deleted");
    let violations = t.events_of("protocol_error")?;
    assert!(
        violations.iter().any(|v| v["detail"]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("standard_conforming_strings")),
        "{violations:?}"
    );
    Ok(())
}

#[test]
fn a_copy_is_masked_by_its_own_options_not_by_a_cached_neighbours() -> Result<()> {
    let t = fixture()?;
    // `HEADER 1` makes the first line a header, which masking leaves alone; `HEADER 0` writes
    // none. With `HEADER 1` classified first, the classification cache (which leaves numbers'
    // values out of its keys) once answered `HEADER 0` with `HEADER 1`'s result, and the first
    // row went out unmasked.
    let with_header = t.psql_ok("COPY users (ssn) TO STDOUT (FORMAT csv, HEADER 1)")?;
    assert!(with_header.starts_with("ssn"), "{with_header}");
    assert!(!leaks_ssn(&with_header), "{with_header}");
    let without = t.psql_ok("COPY users (ssn) TO STDOUT (FORMAT csv, HEADER 0)")?;
    assert!(!leaks_ssn(&without), "{without}");
    assert_eq!(without.matches("[masked]").count(), 3, "{without}");
    Ok(())
}

#[test]
fn statement_and_portal_maps_mirror_the_server() -> Result<()> {
    let t = fixture()?;
    // A SQL cursor executed through the protocol, after describing an unrelated statement: the
    // gateway describes the cursor itself, and masks it.
    let r = t.script(json!([
        {"Q": "BEGIN"}, {"read": "Z"},
        {"Q": "DECLARE cur CURSOR FOR SELECT id, ssn FROM users ORDER BY id"}, {"read": "Z"},
        {"P": ["", "SELECT 1::int, 'x'::text"]}, {"D": ["S", ""]},
        {"E": ["cur", 0]}, {"S": null}, {"read": "Z"},
        {"Q": "COMMIT"}, {"read": "Z"},
    ]))?;
    let got = rows(&r);
    assert_eq!(got.len(), 3, "{r}");
    assert!(!leaks_ssn(&r.to_string()), "cursor rows unmasked: {r}");

    // A failed re-Parse must not change what the gateway believes a statement is.
    let r = t.script(json!([
        {"P": ["c", "COPY users (id, ssn) TO STDOUT"]}, {"S": null}, {"read": "Z"},
        {"P": ["c", "COPY users (id) TO STDOUT"]}, {"S": null}, {"read": "Z"},
        {"B": ["", "c", []]}, {"E": ["", 0]}, {"S": null}, {"read": "Z"},
    ]))?;
    assert!(r.to_string().contains("already exists"), "{r}");
    assert!(r.to_string().contains("[masked]"), "{r}");
    assert!(
        !leaks_ssn(&r.to_string()),
        "COPY unmasked after a failed re-Parse: {r}"
    );

    // A refused re-Parse of an existing name: the server keeps the old statement, and so does
    // the gateway: its execution is recorded as what ran.
    let r = t.script(json!([
        {"P": ["d", "SELECT id FROM users WHERE id = 1"]}, {"S": null}, {"read": "Z"},
        {"P": ["d", "DELETE FROM users WHERE id = 1"]}, {"S": null}, {"read": "Z"},
        {"B": ["", "d", []]}, {"E": ["", 0]}, {"S": null}, {"read": "Z"},
    ]))?;
    assert_eq!(rows(&r), [vec![json!("1")]], "{r}");
    let executed: Vec<Value> = t
        .events_of("sql")?
        .into_iter()
        .filter(|e| e["detail"]["protocol"] == "extended" && e["detail"]["decision"] == "allow")
        .collect();
    assert!(
        executed
            .iter()
            .any(|e| e["detail"]["sql"] == "SELECT id FROM users WHERE id = 1"),
        "the execution is recorded as the statement the server ran: {executed:?}"
    );

    // Portals and statements the gateway never saw made are refused, not guessed at.
    let r = t.script(json!([
        {"E": ["nowhere", 0]}, {"S": null}, {"read": "Z"},
        {"B": ["", "never-prepared", []]}, {"S": null}, {"read": "Z"},
        {"Q": "EXECUTE never_prepared"}, {"read": "Z"},
        {"Q": "FETCH ALL FROM nowhere"}, {"read": "Z"},
    ]))?;
    let e = errors(&r);
    assert_eq!(e.len(), 4, "{r}");
    assert!(
        e.iter()
            .all(|(c, m)| c == "0A000" && m.contains("unknown to the gateway")),
        "{e:?}"
    );

    // SQL PREPARE / EXECUTE, and a protocol Bind of a SQL-prepared statement: masked, recorded.
    let r = t.script(json!([
        {"Q": "PREPARE p AS SELECT ssn FROM users WHERE id = $1"}, {"read": "Z"},
        {"Q": "EXECUTE p(1)"}, {"read": "Z"},
        {"B": ["", "p", ["2"]]}, {"E": ["", 0]}, {"S": null}, {"read": "Z"},
    ]))?;
    assert_eq!(rows(&r).len(), 2, "{r}");
    assert!(!leaks_ssn(&r.to_string()), "{r}");
    Ok(())
}

#[test]
fn every_server_message_that_can_carry_data_is_masked() -> Result<()> {
    let t = fixture()?;
    // Values of covered columns in errors: the server quotes them; the gateway withholds the text.
    let r = t.script(json!([
        {"Q": "SELECT id FROM users WHERE ssn::int > 0"}, {"read": "Z"},
        {"P": ["", "SELECT id FROM users WHERE pin::text::int > 0 AND ssn::int > 0"]},
        {"B": ["", "", []]}, {"E": ["", 0]}, {"S": null}, {"read": "Z"},
    ]))?;
    assert_eq!(errors(&r).len(), 2, "{r}");
    assert!(
        errors(&r).iter().all(|(_, m)| m.contains("withheld")),
        "{r}"
    );
    // And computing on them is refused before anything runs.
    let r = t.script(json!([
        {"Q": "SELECT string_agg(ssn, ',')::int FROM users"}, {"read": "Z"},
        {"Q": "SELECT pg_notify('c', ssn) FROM users"}, {"read": "Z"},
        {"Q": "SELECT set_config('application_name', ssn, false) FROM users"}, {"read": "Z"},
        {"Q": "SELECT c FROM users c"}, {"read": "Z"},
        {"Q": "SELECT * FROM (SELECT ssn FROM users) s"}, {"read": "Z"},
        {"Q": "SELECT ssn FROM users UNION ALL SELECT 'x'"}, {"read": "Z"},
        {"Q": "UPDATE users SET note = ssn WHERE id = 1"}, {"read": "Z"},
    ]))?;
    let e = errors(&r);
    assert_eq!(e.len(), 7, "{r}");
    assert!(
        e.iter().all(|(c, m)| c == "42501" && m.contains("mask")),
        "{e:?}"
    );
    // Detectors run over errors, notices, notifications and reported settings of other tables.
    let r = t.script(json!([
        {"Q": "SELECT body::int FROM notes WHERE body LIKE '%dave%'"}, {"read": "Z"},
        {"Q": "SELECT shout(body) FROM notes WHERE body LIKE '%dave%'"}, {"read": "Z"},
        {"Q": "LISTEN c"}, {"read": "Z"},
        {"Q": "SELECT pg_notify('c', body) FROM notes WHERE body LIKE '%dave%'"}, {"read": "Z"},
        {"Q": "SELECT set_config('application_name', body, false) FROM notes WHERE body LIKE '%dave%'"}, {"read": "Z"},
    ]))?;
    let text = r.to_string();
    assert!(!text.contains("dave@example.com"), "{text}");
    for tag in ["E", "N", "A", "S"] {
        assert!(
            messages(&r)
                .iter()
                .any(|m| m["tag"] == tag && m.to_string().contains("[masked:email]")),
            "a masked {tag} message: {text}"
        );
    }
    // The recording keeps what the client was shown.
    let recorded = serde_json::to_string(&t.events()?)?;
    assert!(!leaks_ssn(&recorded), "{recorded}");
    assert!(!recorded.contains("dave@example.com"), "{recorded}");
    Ok(())
}

fn daemon_peak_rss_kib(t: &Pg) -> u64 {
    std::fs::read_to_string(format!("/proc/{}/status", t.daemon.pid()))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn one_huge_statement_costs_bounded_memory() -> Result<()> {
    let t = fixture()?;
    t.psql_ok("select 1")?;
    let before = daemon_peak_rss_kib(&t);
    let huge = format!("SELECT 1{}", ",1".repeat(2 * 1024 * 1024));
    let many_tokens = format!("SELECT 1{}", ",1".repeat(400 * 1024));
    let r = t.script(json!([
        {"Q": huge}, {"read": "Z"},
        {"P": ["", many_tokens]}, {"S": null}, {"read": "Z"},
        {"Q": "SELECT 'still here'"}, {"read": "Z"},
    ]))?;
    let e = errors(&r);
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(e[0].1.contains("max_statement_bytes"), "{e:?}");
    assert!(e[1].1.contains("max_statement_tokens"), "{e:?}");
    assert_eq!(rows(&r), [vec![json!("still here")]]);
    let grew = daemon_peak_rss_kib(&t).saturating_sub(before);
    // The messages themselves are buffered (4 MiB and 0.8 MiB); nothing is parsed.
    assert!(grew < 64 * 1024, "the gateway grew by {grew} KiB");
    Ok(())
}

#[test]
fn classifier_blind_spots_are_closed() -> Result<()> {
    let t = fixture()?;
    for sql in [
        "SELECT * FROM (TABLE secrets) s",
        "WITH x AS (TABLE secrets) SELECT * FROM x",
        "SELECT 1 AS id, 'x' AS v UNION TABLE secrets",
        "SELECT * FROM (WITH secrets AS (SELECT 1) SELECT * FROM secrets) a, secrets",
        "CALL wipe_users()",
        "DO $$ BEGIN DELETE FROM users; END $$",
        "SELECT query_to_xml('delete from users returning 1', true, true, '')",
        "SELECT * FROM U&\"secr\\0065ts\"",
    ] {
        let out = t.psql(&["-c", sql]);
        assert!(!out.status.success(), "{sql} ran: {}", stdout(&out));
        assert!(
            stderr(&out).contains("42501") || stderr(&out).contains("gateway"),
            "{sql}: {}",
            stderr(&out)
        );
    }
    assert_eq!(users_left(&t)?, "3");
    // COPY split as PostgreSQL writes it: an escaped delimiter or a quoted one is data.
    let out = t.psql_ok("COPY users (note, ssn) TO STDOUT (DELIMITER ' ')")?;
    assert!(!leaks_ssn(&out), "{out}");
    assert!(
        out.contains("mail\\ "),
        "the escaped space stays data: {out}"
    );
    let out = t.psql_ok(
        "COPY users (note, ssn, email) TO STDOUT (FORMAT csv, QUOTE '''', ESCAPE '\\', FORCE_QUOTE *)",
    )?;
    assert!(!leaks_ssn(&out), "{out}");
    // All columns, from the catalog; and a table found through the search path, not `public`.
    let out = t.psql_ok("COPY users TO STDOUT")?;
    assert!(!leaks_ssn(&out), "{out}");
    admin(&t.pg, "alter role app set search_path = hr, public")?;
    let out = t.psql_ok("COPY staff TO STDOUT")?;
    assert!(!out.contains("555-66-7777"), "{out}");
    assert!(out.contains("[masked]"), "{out}");
    Ok(())
}

#[test]
fn session_settings_are_policy() -> Result<()> {
    let t = fixture()?;
    for options in [
        "-c role=admin",
        "-c search_path=vault",
        "-c session_authorization=postgres",
        "-d 5",
    ] {
        let out = t.job_env(
            "psql",
            &[
                "-X",
                "-At",
                "-h",
                &t.host(),
                "-U",
                "agent",
                "-d",
                "app",
                "-c",
                "select current_user",
            ],
            &[("PGOPTIONS", options)],
        );
        assert!(!out.status.success(), "{options}: {}", stdout(&out));
        assert!(
            stderr(&out).contains("not allowed"),
            "{options}: {}",
            stderr(&out)
        );
    }
    let out = t.job_env(
        "psql",
        &[
            "-X",
            "-At",
            "-h",
            &t.host(),
            "-U",
            "agent",
            "-d",
            "app",
            "-c",
            "show statement_timeout",
        ],
        &[("PGOPTIONS", "-c statement_timeout=7s")],
    );
    assert_eq!(stdout(&out), "7s", "{}", stderr(&out));
    for sql in [
        "SET ROLE admin",
        "SET search_path = vault",
        "SELECT set_config('role', 'admin', false)",
    ] {
        let out = t.psql(&[
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
            "-c",
            "select current_user",
        ]);
        assert!(!out.status.success(), "{sql}: {}", stdout(&out));
        assert!(!stdout(&out).contains("admin"), "{sql}: {}", stdout(&out));
    }
    // What was forwarded is recorded.
    let sessions = t.events_of("upstream_session")?;
    assert!(
        sessions
            .iter()
            .any(|s| s["detail"]["settings"]["statement_timeout"] == "7s"),
        "{sessions:?}"
    );
    // Unqualified names resolve through the session's search path, read from the server.
    admin(
        &t.pg,
        "create schema vault authorization app; create table vault.vaulted (v text); alter table vault.vaulted owner to app; alter role app set search_path = vault, public",
    )?;
    let out = t.psql(&["-c", "select * from vaulted"]);
    assert!(!out.status.success(), "vault.* is denied: {}", stdout(&out));
    assert!(stderr(&out).contains("no-secrets"), "{}", stderr(&out));
    Ok(())
}

#[test]
fn approval_covers_each_execution_with_its_parameters() -> Result<()> {
    let t = fixture()?;
    let addr = format!("{}:5432", t.host());
    let script = json!([
        {"timeout": 60},
        {"P": ["u", "UPDATE users SET note = $1 WHERE id = $2"]}, {"S": null}, {"read": "Z"},
        {"B": ["", "u", ["first", "1"]]}, {"E": ["", 0]}, {"S": null}, {"read": "Z"},
        {"B": ["", "u", ["second", "2"]]}, {"E": ["", 0]}, {"S": null}, {"read": "Z"},
    ]);
    let mut job = std::process::Command::new(gateway_e2e::gateway_bin());
    job.arg("--control-socket")
        .arg(&t.daemon.control_socket)
        .args(["run", "--"])
        .arg(gateway_e2e::pgwire_bin())
        .args([addr.as_str(), "script", &script.to_string()])
        .stdout(std::process::Stdio::piped());
    let child = job.spawn()?;
    // Each execution asks, with its own parameters; nothing was asked at Parse.
    let mut seen = Vec::new();
    for expected in ["first", "second"] {
        let mut pending = None;
        gateway_e2e::wait_until(std::time::Duration::from_secs(15), || {
            pending = t
                .daemon
                .cli_json(&["approvals", "list", "--json"])
                .ok()
                .and_then(|v| v.as_array().cloned())
                .and_then(|v| v.into_iter().find(|a| a["status"] == "pending"));
            pending.is_some()
        });
        let a = pending.unwrap_or_else(|| panic!("no pending request for {expected}"));
        assert!(a.to_string().contains(expected), "{a}");
        let id = a["id"].as_str().unwrap_or_default().to_string();
        let out = t.daemon.cli(&["approvals", "approve", &id]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        seen.push(id);
    }
    let out = child.wait_with_output()?;
    let r: Value = serde_json::from_slice(&out.stdout)?;
    assert!(errors(&r).is_empty(), "{r}");
    assert_eq!(seen.len(), 2);
    assert_eq!(
        admin(
            &t.pg,
            "select note from users where id in (1, 2) order by id"
        )?,
        "first\nsecond"
    );
    Ok(())
}

/// A PostgreSQL impostor: answers an SSLRequest with `N` (or does TLS with a self-signed
/// certificate), asks for a cleartext password, and logs every byte it receives.
const IMPOSTOR: &str = r#"
import socket, ssl, sys
host, log, mode = sys.argv[1], sys.argv[2], sys.argv[3]
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((host, 5432)); srv.listen(1); srv.settimeout(20)
open(log, "a").write("listening\n")
conn, _ = srv.accept(); conn.settimeout(5)
got = b""
try:
    got += conn.recv(8)
    if mode == "tls":
        conn.sendall(b"S")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain(sys.argv[4], sys.argv[5])
        conn = ctx.wrap_socket(conn, server_side=True)
    else:
        conn.sendall(b"N")
    got += conn.recv(4096)
    conn.sendall(b"R\x00\x00\x00\x08\x00\x00\x00\x03")
    got += conn.recv(4096)
except Exception as e:
    open(log, "a").write("ended: %s\n" % e)
open(log, "a").write("received: %r\n" % got)
"#;

#[test]
fn credentials_go_only_to_a_server_the_gateway_authenticated() -> Result<()> {
    let t = Pg::with_verified_tls(APP)?;
    let dir = t.dir.path();
    let [a, b, c, _] = t.ns.host_ip.octets();
    let net = format!("{a}.{b}.{c}.0/24");
    let impostor_ip = t.ns.host_ip.to_string();
    let ca = dir.join("pg-ca.pem");
    let secret = dir.join("app-db.secret");
    let target = |tls: &str| {
        format!(
            "[[targets]]\nname = \"range-db\"\nprotocol = \"postgres\"\naddress = \"{net}:5432\"\n[targets.credentials]\nuser = \"app\"\npassword_file = \"{}\"\n[targets.postgres]\n{tls}\n\n[[rules]]\nname = \"jobs\"\naction = \"allow\"\ntargets = [\"range-db\"]\nunauthenticated = true\n",
            secret.display()
        )
    };
    // A network target whose server is not authenticated is a configuration error: any address
    // in it could be a job's.
    let unverified = dir.join("unverified.toml");
    std::fs::write(&unverified, target("tls = \"prefer\""))?;
    let out = std::process::Command::new(gateway_e2e::gateway_bin())
        .arg("check-config")
        .arg(&unverified)
        .output()?;
    assert!(!out.status.success(), "accepted: {}", stdout(&out));
    assert!(
        stderr(&out).contains("more than one address"),
        "{}",
        stderr(&out)
    );

    let daemon = gateway_e2e::Daemon::start(gateway_e2e::DaemonConfig {
        server: String::new(),
        body: target(&format!(
            "tls = \"verify-full\"\nca_file = \"{}\"",
            ca.display()
        )),
    })?;
    let psql = |host: &str| {
        std::process::Command::new(gateway_e2e::gateway_bin())
            .arg("--control-socket")
            .arg(&daemon.control_socket)
            .args([
                "run",
                "--",
                "psql",
                "-X",
                "-At",
                "-h",
                host,
                "-U",
                "agent",
                "-d",
                "app",
                "-c",
                "select current_user",
            ])
            .env("PGCONNECT_TIMEOUT", "10")
            .output()
    };
    // The real server, verified, works.
    let out = psql(&t.host())?;
    assert_eq!(stdout(&out), "app", "{}", stderr(&out));
    // An impostor on another address of the range (this machine's own, which a job can listen
    // on) gets no password: without TLS, or with a certificate the target's CA did not sign.
    let script = dir.join("impostor.py");
    std::fs::write(&script, IMPOSTOR)?;
    let key = dir.join("impostor.key");
    let cert = dir.join("impostor.pem");
    gateway_e2e::run_ok(
        std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=impostor",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert),
    )?;
    for mode in ["plain", "tls"] {
        let log = dir.join(format!("impostor-{mode}.log"));
        let mut impostor = gateway_e2e::Process::spawn(
            "impostor",
            std::process::Command::new("python3")
                .arg(&script)
                .arg(&impostor_ip)
                .arg(&log)
                .arg(mode)
                .arg(&cert)
                .arg(&key),
            dir.join(format!("impostor-{mode}.out")),
        )?;
        assert!(gateway_e2e::wait_until(
            std::time::Duration::from_secs(10),
            || { std::fs::read_to_string(&log).is_ok_and(|l| l.contains("listening")) }
        ));
        let out = psql(&impostor_ip)?;
        assert!(!out.status.success(), "{mode}: {}", stdout(&out));
        gateway_e2e::wait_until(std::time::Duration::from_secs(15), || !impostor.alive());
        let seen = std::fs::read_to_string(&log)?;
        assert!(seen.contains("received"), "{mode}: {seen}");
        assert!(
            !seen.contains("apppw"),
            "{mode}: the impostor got the password: {seen}"
        );
        assert!(
            !seen.contains("user\\x00app"),
            "{mode}: the impostor got a login: {seen}"
        );
    }
    Ok(())
}
