//! PostgreSQL at Layer 7 end to end: PostgreSQL 15 in a network namespace, the gateway daemon with
//! a postgres target, and real clients (psql, pgbench, psycopg, a raw wire client) run as jobs.
//! The job never has the database password: it connects as whoever it likes, without a secret.

use std::{
    fs,
    process::{Command, Output},
};

use anyhow::{Context as _, Result, ensure};
use gateway_e2e::{
    TempDir, gateway_bin,
    pg::{APP, Account, Pg, admin, stderr, stdout},
    unique_id, wait_until,
};
use serde_json::Value;

#[test]
fn psql_runs_queries_with_injected_credentials_and_every_statement_is_recorded() -> Result<()> {
    let t = Pg::start()?;
    // The job asks for user "agent" and has no password; the server sees the target's account.
    let out = t.psql_ok("select current_user, count(*) from users")?;
    assert_eq!(out, "app|3");
    let out = t.psql_ok("select 1; select 'two'")?;
    assert_eq!(out, "1\ntwo");
    // psql's own catalog queries (\dt, \d) parse and pass.
    assert!(t.psql_ok("\\dt")?.contains("users"));
    assert!(t.psql_ok("\\d users")?.contains("email"));

    let sql = t.events_of("sql")?;
    assert!(
        sql.iter().any(
            |e| e["detail"]["sql"] == "select current_user, count(*) from users"
                && e["detail"]["decision"] == "allow"
                && e["detail"]["rule"] == "jobs"
                && e["detail"]["statements"][0]["kind"] == "select"
        ),
        "{sql:#?}"
    );
    let results = t.events_of("sql_result")?;
    assert!(
        results
            .iter()
            .any(|e| e["detail"]["rows"] == 1 && e["detail"]["sample"][0][0] == "app"),
        "{results:#?}"
    );
    let connected = t.events_of("upstream_session")?;
    assert_eq!(connected[0]["detail"]["user"], "app");
    assert_eq!(connected[0]["detail"]["client_user"], "agent");
    assert_eq!(connected[0]["detail"]["auth"], "scram-sha-256");

    // The statement log reads as a log.
    let session = t.daemon.sessions()?[0]["id"].to_string();
    let show = t.daemon.cli(&["sessions", "show", &session]);
    let text = stdout(&show);
    assert!(
        text.contains("select current_user, count(*) from users")
            && text.contains("allow")
            && text.contains("1 row"),
        "{text}"
    );
    Ok(())
}

#[test]
fn a_full_disk_executes_no_statement_unrecorded() -> Result<()> {
    // A session open before the recording disk fills up: each statement is recorded before it is
    // forwarded, so once nothing can be recorded nothing more reaches the server.
    let mut t = Pg::start()?;
    let disk = t.daemon.restart_on_small_disk("4m")?;
    let host = t.host();
    let mut psql = Command::new(gateway_bin())
        .arg("--control-socket")
        .arg(&t.daemon.control_socket)
        .args(["run", "--", "timeout", "60", "psql", "-X", "-At", "-h"])
        .args([
            host.as_str(),
            "-U",
            "agent",
            "-d",
            "app",
            "-v",
            "ON_ERROR_STOP=0",
        ])
        .env("PGPASSFILE", "/nonexistent")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let mut stdin = psql.stdin.take().context("psql stdin")?;
    use std::io::Write as _;
    writeln!(stdin, "insert into notes (body) values ('before');")?;
    let count = |pattern: &str| {
        admin(
            &t.pg,
            &format!("select count(*) from notes where body like '{pattern}'"),
        )
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(0)
    };
    ensure!(
        wait_until(std::time::Duration::from_secs(20), || count("before") == 1),
        "the session did not start"
    );

    disk.fill()?;
    for i in 0..20 {
        writeln!(stdin, "insert into notes (body) values ('during-{i}');")?;
    }
    drop(stdin);
    let out = psql.wait_with_output()?;
    let executed = count("during-%");
    // The journal's last page may still hold a record or two; then the session is closed.
    assert!(executed < 20, "all 20 statements ran with a full disk");
    assert!(
        stderr(&out).contains("cannot record") || stderr(&out).contains("connection"),
        "{}",
        stderr(&out)
    );

    disk.free()?;
    // Every statement that ran is in the record.
    let recorded = || {
        t.events_of("sql").map_or(0, |events| {
            events
                .iter()
                .filter(|e| {
                    e["detail"]["sql"]
                        .as_str()
                        .is_some_and(|q| q.contains("'during-"))
                })
                .count()
        })
    };
    assert!(
        wait_until(std::time::Duration::from_secs(10), || recorded()
            >= executed),
        "{executed} statements ran, {} recorded",
        recorded()
    );
    // The job's end, refused while the disk was full, is recorded once it can be.
    let active_jobs = || {
        t.daemon
            .cli_json(&["status", "--json"])
            .map_or(usize::MAX, |s| {
                s["jobs"].as_array().map_or(usize::MAX, Vec::len)
            })
    };
    assert!(
        wait_until(std::time::Duration::from_secs(10), || active_jobs() == 0),
        "{:?}",
        t.daemon.cli_json(&["status", "--json"])
    );
    assert_eq!(
        t.psql_ok("select count(*) from notes where body = 'before'")?,
        "1"
    );
    drop(disk);
    Ok(())
}

#[test]
fn a_long_statement_log_is_shown_page_by_page() -> Result<()> {
    let t = Pg::start()?;
    let dir = TempDir::new(&format!("pg-pages-{}", unique_id()));
    let script = dir.path().join("many.sql");
    let statements = 1100;
    let text: String = (0..statements).map(|n| format!("select {n};\n")).collect();
    std::fs::write(&script, text)?;
    let out = t.psql(&["-v", "ON_ERROR_STOP=1", "-f", &script.display().to_string()]);
    ensure!(out.status.success(), "psql -f: {}", stderr(&out));
    let session = t.daemon.sessions()?[0]["id"].to_string();

    // The first page is capped, and says where the next one starts.
    let first = t.daemon.show_session(&session)?;
    assert_eq!(
        first["events"].as_array().map(Vec::len),
        Some(2000),
        "{}",
        first["more_after"]
    );
    assert!(first["more_after"].is_i64(), "{}", first["more_after"]);
    let text = stdout(&t.daemon.cli(&["sessions", "show", &session]));
    assert!(
        text.contains(&format!(
            "(more events: gateway sessions show {session} --after "
        )),
        "{}",
        &text[text.len().saturating_sub(300)..]
    );
    // All pages together: every statement once, in order, nothing lost between pages.
    let events = t.session_events(&session)?;
    let ids: Vec<i64> = events.iter().filter_map(|e| e["id"].as_i64()).collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ids out of order or repeated"
    );
    let sql: Vec<String> = events
        .iter()
        .filter(|e| e["kind"] == "sql")
        .filter_map(|e| e["detail"]["sql"].as_str())
        .map(|q| q.trim_end_matches(';').to_string())
        .collect();
    let expected: Vec<String> = (0..statements).map(|n| format!("select {n}")).collect();
    assert_eq!(sql, expected);
    Ok(())
}

#[test]
fn drop_unfiltered_delete_and_server_file_access_are_refused_naming_the_rule() -> Result<()> {
    let t = Pg::start()?;
    let out = t.psql(&["-c", "DROP TABLE users"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("no-drop"), "{err}");
    assert_eq!(admin(&t.pg, "select count(*) from users")?, "3");

    let out = t.psql(&["-c", "DELETE FROM users"]);
    let err = stderr(&out);
    assert!(
        !out.status.success() && err.contains("no-unfiltered-writes") && err.contains("WHERE"),
        "{err}"
    );
    let out = t.psql(&["-c", "DELETE FROM users WHERE true"]);
    assert!(
        !out.status.success(),
        "a WHERE without a column is no filter"
    );
    assert_eq!(admin(&t.pg, "select count(*) from users")?, "3");
    assert_eq!(t.psql_ok("DELETE FROM users WHERE id = 3")?, "DELETE 1");
    assert_eq!(admin(&t.pg, "select count(*) from users")?, "2");

    let out = t.psql(&["-c", "select pg_read_file('/etc/hostname')"]);
    assert!(stderr(&out).contains("no-server-files"), "{}", stderr(&out));
    // SQL the gateway cannot see into is refused, not passed on.
    let out = t.psql(&["-c", "DO $$ BEGIN PERFORM 1; END $$"]);
    assert!(stderr(&out).contains("DO block"), "{}", stderr(&out));
    let out = t.psql(&["-c", "SELEC 1"]);
    assert!(
        stderr(&out).contains("could not be parsed"),
        "{}",
        stderr(&out)
    );

    // psql shows SQLSTATE with VERBOSITY verbose.
    let out = t.psql(&["-v", "VERBOSITY=verbose", "-c", "TRUNCATE users"]);
    assert!(stderr(&out).contains("42501"), "{}", stderr(&out));

    let denied: Vec<Value> = t
        .events_of("sql")?
        .into_iter()
        .filter(|e| e["detail"]["decision"] == "deny")
        .collect();
    assert!(denied.iter().any(|e| e["detail"]["rule"] == "no-drop"));
    Ok(())
}

#[test]
fn require_approval_holds_the_statement_until_a_person_decides() -> Result<()> {
    let t = Pg::start()?;
    // Approved by root through the CLI while psql waits: the GRANT runs.
    let out = std::thread::scope(|scope| -> Result<Output> {
        let job = scope.spawn(|| t.psql(&["-c", "GRANT SELECT ON users TO PUBLIC"]));
        let mut request = Value::Null;
        gateway_e2e::wait_until(std::time::Duration::from_secs(10), || {
            request = t.daemon.pending_approval().unwrap_or_default();
            !request.is_null()
        });
        let id = request["id"]
            .as_str()
            .context("no pending approval request")?
            .to_string();
        assert_eq!(request["operation"], "GRANT SELECT ON users TO PUBLIC");
        assert_eq!(request["kind"], "sql");
        assert_eq!(request["rule"], "grants-need-approval");
        let approve = t.daemon.cli(&["approvals", "approve", &id]);
        ensure!(approve.status.success(), "{}", stderr(&approve));
        Ok(job.join().expect("psql thread"))
    })?;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        admin(
            &t.pg,
            "select has_table_privilege('public', 'users', 'select')"
        )?,
        "t"
    );
    // Nobody decides: the request expires and the statement is refused, naming why.
    let out = t.psql(&[
        "-v",
        "VERBOSITY=verbose",
        "-c",
        "REVOKE SELECT ON users FROM PUBLIC",
    ]);
    let err = stderr(&out);
    assert!(
        !out.status.success() && err.contains("42501") && err.contains("expired"),
        "{err}"
    );
    assert_eq!(
        admin(
            &t.pg,
            "select has_table_privilege('public', 'users', 'select')"
        )?,
        "t",
        "the REVOKE did not run"
    );
    Ok(())
}

#[test]
fn a_refused_statement_inside_a_transaction_aborts_it_like_a_server_error() -> Result<()> {
    let t = Pg::start()?;
    let script = "BEGIN;
INSERT INTO notes (body) VALUES ('first');
DROP TABLE notes;
SELECT 'after the refusal';
ROLLBACK;
SELECT count(*) FROM notes;
";
    let path = t.dir.path().join("script.sql");
    fs::write(&path, script)?;
    let out = t.psql(&["-q", "-v", "ON_ERROR_STOP=0", "-f", path.to_str().unwrap()]);
    let err = stderr(&out);
    // The refusal, then the server's own "transaction is aborted" for the next statement.
    assert!(err.contains("no-drop"), "{err}");
    assert!(
        err.contains("current transaction is aborted"),
        "the server must be in the failed transaction too: {err}"
    );
    assert_eq!(stdout(&out), "0", "the INSERT was rolled back");
    assert_eq!(admin(&t.pg, "select count(*) from notes")?, "0");
    Ok(())
}

#[test]
fn results_are_masked_by_column_rule_and_by_detector_with_shape_intact() -> Result<()> {
    let t = Pg::start()?;
    let out = t.psql_ok("select id, email, card, note, ssn, pin from users order by id")?;
    let rows: Vec<&str> = out.lines().collect();
    assert_eq!(rows.len(), 3, "row count intact: {out}");
    assert_eq!(
        rows[0],
        "1|[masked:email]|[masked:credit_card]|mail [masked:email]|[masked]|0"
    );
    assert_eq!(
        rows[1],
        "2|[masked:email]|[masked:credit_card]|nothing secret|[masked]|0"
    );
    // A column rule follows the column, not its name.
    assert_eq!(
        t.psql_ok("select ssn as x, pin as z from users where id = 1")?,
        "[masked]|0"
    );
    // Types stay what they were: the masked int is still an int.
    assert_eq!(
        t.psql_ok("select pg_typeof(pin) from users limit 1")?,
        "integer"
    );
    // Computed from a masked column: the server cannot say where the value came from, so the
    // gateway could not mask it; refused.
    for sql in [
        "select pin + 0 from users",
        "select sum(pin) from (select pin from users) s",
    ] {
        let out = t.psql(&["-c", sql]);
        assert!(
            stderr(&out).contains("is masked"),
            "{sql}: {}",
            stderr(&out)
        );
    }
    let results = t.events_of("sql_result")?;
    assert!(
        results
            .iter()
            .any(|e| e["detail"]["masked_values"].as_u64() >= Some(8)
                && e["detail"]["sample"][0][1] == "[masked:email]"),
        "the recorded sample is masked too: {results:#?}"
    );
    // Nothing unmasked is in the session store.
    let all = serde_json::to_string(&t.events()?)?;
    assert!(!all.contains("alice@example.com") || all.contains("mail alice@example.com'"));
    assert!(!all.contains("4111 1111 1111 1111"));
    Ok(())
}

#[test]
fn copy_in_and_out_pass_through_and_copy_out_is_masked() -> Result<()> {
    let t = Pg::start()?;
    let out = t.psql_ok("COPY users (id, email, ssn) TO STDOUT")?;
    assert_eq!(
        out.lines().next(),
        Some("1\t[masked:email]\t[masked]"),
        "{out}"
    );
    // Every column, in the order the catalog gives.
    let out = t.psql_ok("COPY users TO STDOUT")?;
    assert_eq!(
        out.lines().next(),
        Some("1\t[masked:email]\t[masked:credit_card]\tmail [masked:email]\t[masked]\t0"),
        "{out}"
    );
    let csv = t.dir.path().join("in.csv");
    fs::write(&csv, "from copy one\nfrom copy two\n")?;
    let out = t.psql(&[
        "-v",
        "ON_ERROR_STOP=1",
        "-c",
        &format!("\\copy notes (body) FROM '{}'", csv.display()),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        admin(
            &t.pg,
            "select count(*) from notes where body like 'from copy%'"
        )?,
        "2"
    );
    // A query's output has no column origins: fine where it reads no masked column (detectors
    // still run), refused where it does.
    let out = t.psql_ok("COPY (SELECT body FROM notes ORDER BY id) TO STDOUT WITH (FORMAT csv)")?;
    assert!(out.contains("from copy"), "{out}");
    let out = t.psql(&["-c", "COPY (SELECT ssn FROM users) TO STDOUT"]);
    assert!(stderr(&out).contains("is masked"), "{}", stderr(&out));
    Ok(())
}

#[test]
fn pgbench_runs_simple_extended_and_prepared_through_the_gateway() -> Result<()> {
    let t = Pg::start()?;
    // Initialise directly (as the owner of the data), then run as a job through the gateway.
    let mut init = Command::new("ip");
    init.args([
        "netns",
        "exec",
        &t.ns.name,
        "env",
        "PGPASSWORD=apppw",
        "pgbench",
        "-i",
        "-s",
        "1",
        "-q",
        "-h",
    ])
    .arg(t.host())
    .args(["-U", "app", "app"]);
    let o = init.output()?;
    ensure!(o.status.success(), "pgbench -i: {}", stderr(&o));
    let host = t.host();
    for mode in ["simple", "extended", "prepared"] {
        for script in [&["-S"][..], &["-N"][..]] {
            let mut args = vec![
                "-h", &host, "-U", "agent", "-n", "-c", "2", "-j", "1", "-t", "100", "-M", mode,
            ];
            args.extend_from_slice(script);
            args.push("app");
            let out = t.job("pgbench", &args);
            let text = stdout(&out);
            assert!(
                out.status.success()
                    && text.contains("number of transactions actually processed: 200/200"),
                "pgbench -M {mode} {script:?}: {text}\n{}",
                stderr(&out)
            );
        }
    }
    Ok(())
}

fn python() -> String {
    std::env::var("GATEWAY_E2E_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn driver(t: &Pg, scenario: &str) -> Result<Value> {
    driver_env(t, scenario, &[])
}

/// The driver with libpq environment (`PGSSLMODE`, `PGSSLROOTCERT`, …).
fn driver_env(t: &Pg, scenario: &str, env: &[(&str, &str)]) -> Result<Value> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/pg_driver.py");
    let out = t.job_env(&python(), &[script, &t.host(), scenario], env);
    serde_json::from_str(&stdout(&out))
        .with_context(|| format!("pg_driver {scenario}: {} {}", stdout(&out), stderr(&out)))
}

#[test]
fn psycopg_sees_masked_results_refusals_and_real_transaction_state() -> Result<()> {
    let t = Pg::start()?;
    let r = driver(&t, "basic")?;
    assert_eq!(r["server_user"], "app");
    assert_eq!(
        r["row"],
        serde_json::json!([
            1,
            "[masked:email]",
            "[masked:credit_card]",
            "mail [masked:email]"
        ])
    );
    assert_eq!(r["count"], 3);
    assert_eq!(r["rows"].as_array().map(Vec::len), Some(3));
    // Binary format: the int column is masked as an int, the text column as text.
    assert_eq!(r["binary_row"], serde_json::json!([2, 0, "[masked]"]));
    assert_eq!(r["delete"]["sqlstate"], "42501");
    assert!(
        r["delete"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("no-unfiltered-writes"),
        "{r:#?}"
    );
    assert_eq!(r["status_after_refusal"], "INERROR");
    assert_eq!(r["next_statement"], "25P02");
    assert_eq!(r["notes_after_rollback"], 0);
    assert_eq!(r["drop"]["sqlstate"], "42501");
    assert_eq!(r["named_cursor"], serde_json::json!([1, 2]));
    assert_eq!(r["pipeline"], serde_json::json!([0, 2, 4]));
    assert_eq!(r["copy_out"][0], serde_json::json!(["1", "[masked:email]"]));
    assert_eq!(r["copied_in"], 1);
    // Extended-protocol statements are recorded with their parameters.
    let sql = t.events_of("sql")?;
    assert!(
        sql.iter().any(|e| e["detail"]["protocol"] == "extended"
            && e["detail"]["sql"] == "select id, email, card, note from users where id = $1"
            && e["detail"]["params"].as_array().map(Vec::len) == Some(1)),
        "{sql:#?}"
    );
    Ok(())
}

#[test]
fn cancel_of_a_long_pg_sleep_reaches_the_server() -> Result<()> {
    let t = Pg::start()?;
    let r = driver(&t, "cancel")?;
    assert_eq!(r["sleep"]["outcome"], "57014", "{r:#?}");
    assert_eq!(r["after"], "still usable");
    let cancels = t.events_of("cancel")?;
    assert!(
        cancels
            .iter()
            .any(|e| e["detail"]["outcome"] == "forwarded"),
        "{cancels:#?}"
    );
    Ok(())
}

#[test]
fn md5_and_cleartext_upstream_authentication() -> Result<()> {
    let accounts = || {
        [
            (
                "md5",
                Account {
                    user: "md5user",
                    password: "md5 pw",
                    create: Some((
                        "set password_encryption = 'md5'; create role md5user login password 'md5 pw'; grant select on users to md5user",
                        "host all md5user 0.0.0.0/0 md5",
                    )),
                },
            ),
            (
                "cleartext",
                Account {
                    user: "clearuser",
                    password: "clear-pw",
                    create: Some((
                        "create role clearuser login password 'clear-pw'; grant select on users to clearuser",
                        "host all clearuser 0.0.0.0/0 password",
                    )),
                },
            ),
        ]
    };
    // To a server whose certificate the gateway verified: the password goes.
    for (method, account) in accounts() {
        let user = account.user;
        let t = Pg::with_verified_tls(account)?;
        assert_eq!(
            t.psql_ok("select current_user, count(*) from users")?,
            format!("{user}|3")
        );
        let connected = t.events_of("upstream_session")?;
        assert_eq!(connected[0]["detail"]["auth"], method);
        assert_eq!(connected[0]["detail"]["server_verified"], true);
    }
    // To one it did not verify (a plain connection, as `tls = "prefer"` allows): it does not.
    for (method, account) in accounts() {
        let t = Pg::with(account)?;
        let out = t.psql(&["-c", "select 1"]);
        assert!(!out.status.success(), "{method}: {}", stdout(&out));
        let errors = t.events_of("upstream_error")?;
        assert!(
            errors[0]["detail"]["error"]
                .as_str()
                .unwrap_or_default()
                .contains("only go to an authenticated server"),
            "{method}: {errors:?}"
        );
    }
    Ok(())
}

/// Runs a raw-protocol case as a job and checks the gateway still serves psql afterwards.
fn bad_input(case: &str) -> Result<(Pg, Value)> {
    bad_input_with(case, "")
}

fn bad_input_with(case: &str, settings: &str) -> Result<(Pg, Value)> {
    let t = Pg::with_settings(APP, settings)?;
    let r = t.raw(case)?;
    assert_eq!(
        t.psql_ok("select 'still serving'")?,
        "still serving",
        "the gateway keeps serving after {case}"
    );
    Ok((t, r))
}

fn first_error(r: &Value) -> (String, String) {
    let e = r["messages"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["tag"] == "E"))
        .cloned()
        .unwrap_or_default();
    (
        e["code"].as_str().unwrap_or_default().to_string(),
        e["message"].as_str().unwrap_or_default().to_string(),
    )
}

fn protocol_errors(t: &Pg) -> Result<Vec<Value>> {
    t.events_of("protocol_error")
}

#[test]
fn bad_input_bogus_protocol_version() -> Result<()> {
    let (t, r) = bad_input("bad-version")?;
    let (code, message) = first_error(&r);
    assert_eq!(code, "0A000", "{r}");
    assert!(
        message.contains("unsupported frontend protocol 9999.0"),
        "{message}"
    );
    assert_eq!(r["closed"], true);
    assert!(!protocol_errors(&t)?.is_empty());
    Ok(())
}

#[test]
fn bad_input_oversized_startup_packet() -> Result<()> {
    let (t, r) = bad_input("huge-startup")?;
    assert_eq!(first_error(&r).0, "08P01", "{r}");
    assert_eq!(r["closed"], true);
    assert!(!protocol_errors(&t)?.is_empty());
    Ok(())
}

#[test]
fn bad_input_binary_garbage() -> Result<()> {
    let (t, r) = bad_input("garbage")?;
    assert_eq!(r["closed"], true, "{r}");
    assert!(!protocol_errors(&t)?.is_empty());
    Ok(())
}

#[test]
fn bad_input_truncated_message() -> Result<()> {
    let (t, r) = bad_input("truncated")?;
    assert_eq!(r["closed"], true, "{r}");
    let errors = protocol_errors(&t)?;
    assert!(
        errors.iter().any(|e| e["detail"]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("middle of a message")),
        "{errors:#?}"
    );
    Ok(())
}

#[test]
fn bad_input_wrong_length_field() -> Result<()> {
    let (t, r) = bad_input("bad-length")?;
    let (code, message) = first_error(&r);
    assert_eq!(code, "08P01", "{r}");
    assert!(message.contains("length"), "{message}");
    assert_eq!(r["closed"], true);
    assert!(!protocol_errors(&t)?.is_empty());
    Ok(())
}

#[test]
fn bad_input_oversized_message() -> Result<()> {
    let (t, r) = bad_input("oversized")?;
    let (code, message) = first_error(&r);
    assert_eq!(code, "08P01", "{r}");
    assert!(message.contains("more than"), "{message}");
    assert!(!protocol_errors(&t)?.is_empty());
    Ok(())
}

#[test]
fn bad_input_unknown_message_type() -> Result<()> {
    let (t, r) = bad_input("unknown-type")?;
    let (code, message) = first_error(&r);
    assert_eq!(code, "08P01", "{r}");
    assert!(message.contains("unknown message type"), "{message}");
    assert!(!protocol_errors(&t)?.is_empty());
    Ok(())
}

#[test]
fn function_call_messages_are_refused_and_the_session_goes_on() -> Result<()> {
    let (t, r) = bad_input("function-call")?;
    let tags: Vec<&str> = r["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["tag"].as_str())
        .collect();
    // Refusal + ReadyForQuery, then the next query's full answer.
    assert_eq!(tags, ["E", "Z", "T", "D", "C", "Z"], "{r}");
    assert_eq!(first_error(&r).0, "0A000");
    assert_eq!(r["closed"], false);
    let denied = t.events_of("sql")?;
    assert!(
        denied
            .iter()
            .any(|e| e["detail"]["sql"] == "<FunctionCall message>")
    );
    Ok(())
}

#[test]
fn encryption_requests_are_answered_no_and_startup_continues() -> Result<()> {
    // With TLS toward clients off, SSLRequest is answered like GSSENCRequest.
    let (_t, r) = bad_input_with("encryption-requests", "client_tls = \"off\"")?;
    assert_eq!(r["answer"], "NN");
    let rows: Vec<&Value> = r["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["tag"] == "D")
        .collect();
    assert_eq!(rows.len(), 1, "{r}");
    Ok(())
}

#[test]
fn a_refused_statement_in_a_pipeline_recovers_at_sync() -> Result<()> {
    let (_t, r) = bad_input("pipeline")?;
    let tags: Vec<&str> = r["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["tag"].as_str())
        .collect();
    // Parse refused (Bind and Execute skipped by the server), Sync; then the next pipeline runs.
    assert_eq!(tags, ["E", "Z", "1", "2", "D", "C", "Z"], "{r}");
    let (code, message) = first_error(&r);
    assert_eq!(code, "42501");
    assert!(message.contains("no-drop"), "{message}");
    assert_eq!(r["messages"][1]["status"], "I");
    Ok(())
}

#[test]
fn a_cancel_request_with_an_unknown_key_is_ignored() -> Result<()> {
    let (t, r) = bad_input("cancel-unknown")?;
    assert_eq!(r["closed"], true);
    let cancels = t.events_of("cancel")?;
    assert_eq!(cancels[0]["detail"]["outcome"], "unknown key");
    Ok(())
}

/// VmHWM of a process in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_million_row_select_streams_in_bounded_memory() -> Result<()> {
    let t = Pg::start()?;
    assert_eq!(t.psql_ok("select 1")?, "1");
    let before = peak_rss_kib(t.daemon.pid());
    // About 45 MB of rows, every one through the detectors; psql counts them.
    let host = t.host();
    let out = t.job(
        "sh",
        &[
            "-c",
            &format!(
                "psql -X -At -h {host} -U agent -d app -c \"select g, 'user' || g || '@example.com', md5(g::text) from generate_series(1, 1000000) g\" | wc -l"
            ),
        ],
    );
    assert_eq!(stdout(&out), "1000000", "{}", stderr(&out));
    let after = peak_rss_kib(t.daemon.pid());
    eprintln!("gateway peak RSS: {before} KiB before, {after} KiB after a 1,000,000-row SELECT");
    assert!(
        after < before + 32 * 1024,
        "peak RSS grew from {before} KiB to {after} KiB: the result was buffered"
    );
    let results = t.events_of("sql_result")?;
    assert!(
        results
            .iter()
            .any(|e| e["detail"]["rows"] == 1_000_000 && e["detail"]["masked_values"] == 1_000_000)
    );
    Ok(())
}

#[test]
fn client_tls_verify_full_with_the_gateway_ca_runs_queries_masked() -> Result<()> {
    let t = Pg::start()?;
    let ca = t.write_ca()?;
    let out = t.psql_conn(
        &format!("sslmode=verify-full sslrootcert={}", ca.display()),
        &[
            "\\conninfo",
            "select id, email, ssn, pin from users where id = 1",
        ],
    );
    ensure!(out.status.success(), "psql over TLS: {}", stderr(&out));
    let text = stdout(&out);
    // The client side of the connection (the gateway), not the upstream leg.
    assert!(text.contains("SSL connection (protocol: TLSv1.3"), "{text}");
    assert!(
        text.lines().any(|l| l == "1|[masked:email]|[masked]|0"),
        "masking applies over TLS: {text}"
    );
    let tls = t.events_of("client_tls")?;
    assert_eq!(tls.len(), 1, "{tls:#?}");
    assert_eq!(tls[0]["detail"]["version"], "TLSv1_3", "{tls:#?}");
    let opened = t.events_of("upstream_session")?;
    assert_eq!(opened[0]["detail"]["client_tls"], true, "{opened:#?}");
    let show = t
        .daemon
        .cli(&["sessions", "show", &tls[0]["session"].to_string()]);
    assert!(stdout(&show).contains("client_tls"), "{}", stdout(&show));

    // A plain client is still served by default ("offer"), and recorded as plain.
    let out = t.psql_conn("sslmode=disable", &["\\conninfo", "select 'plain'"]);
    ensure!(out.status.success(), "plain psql: {}", stderr(&out));
    assert!(!stdout(&out).contains("SSL connection"), "{}", stdout(&out));
    let opened = t.events_of("upstream_session")?;
    assert!(
        opened.iter().any(|e| e["detail"]["client_tls"] == false),
        "{opened:#?}"
    );
    Ok(())
}

#[test]
fn client_tls_verify_full_refuses_an_unrelated_root() -> Result<()> {
    let t = Pg::start()?;
    let key = t.dir.path().join("unrelated.key");
    let cert = t.dir.path().join("unrelated-ca.pem");
    let made = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", "/CN=unrelated CA", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()?;
    ensure!(made.status.success(), "openssl: {}", stderr(&made));
    let out = t.psql_conn(
        &format!("sslmode=verify-full sslrootcert={}", cert.display()),
        &["select 1"],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("certificate verify failed"),
        "{}",
        stderr(&out)
    );
    assert!(t.events_of("sql")?.is_empty(), "nothing ran");
    let errors = protocol_errors(&t)?;
    assert!(
        errors.iter().any(|e| e["detail"]["phase"] == "client_tls"),
        "the failed handshake is recorded: {errors:#?}"
    );
    Ok(())
}

#[test]
fn client_tls_require_refuses_plain_clients_and_serves_tls_ones() -> Result<()> {
    let t = Pg::with_settings(APP, "client_tls = \"require\"")?;
    let out = t.psql_conn("sslmode=disable", &["select 1"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("requires TLS from clients"),
        "{}",
        stderr(&out)
    );
    let refused = t.events_of("refused")?;
    assert!(
        refused.iter().any(|e| e["detail"]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("requires TLS")),
        "{refused:#?}"
    );
    let out = t.psql_conn("sslmode=require", &["select 'over tls'"]);
    ensure!(
        out.status.success(),
        "psql sslmode=require: {}",
        stderr(&out)
    );
    assert_eq!(stdout(&out), "over tls");
    Ok(())
}

#[test]
fn cancel_of_a_long_pg_sleep_works_over_client_tls() -> Result<()> {
    let t = Pg::start()?;
    let ca = t.write_ca()?;
    let ca = ca.display().to_string();
    let env = [("PGSSLMODE", "verify-full"), ("PGSSLROOTCERT", ca.as_str())];
    // PQcancel opens a plain cancel connection; libpq 18's PQcancelConn sends SSLRequest first.
    for scenario in ["cancel", "cancel-safe"] {
        let started = std::time::Instant::now();
        let r = driver_env(&t, scenario, &env)?;
        assert_eq!(r["ssl_in_use"], true, "{scenario}: {r:#?}");
        assert_eq!(r["sleep"]["outcome"], "57014", "{scenario}: {r:#?}");
        assert!(
            r["sleep"]["seconds"].as_f64() < Some(15.0),
            "{scenario}: {r:#?}"
        );
        assert_eq!(r["after"], "still usable");
        assert!(started.elapsed() < std::time::Duration::from_secs(25));
    }
    let cancels = t.events_of("cancel")?;
    for tls in [false, true] {
        assert!(
            cancels
                .iter()
                .any(|e| e["detail"]["outcome"] == "forwarded" && e["detail"]["client_tls"] == tls),
            "a forwarded cancel with client_tls = {tls}: {cancels:#?}"
        );
    }
    Ok(())
}

#[test]
fn client_tls_ca_persists_across_a_daemon_restart() -> Result<()> {
    let mut t = Pg::start()?;
    let before = t.ca_pem()?;
    assert!(
        before.starts_with("-----BEGIN CERTIFICATE-----"),
        "{before}"
    );
    let key = t.daemon.dir.path().join("state/tls/ca.key");
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(fs::metadata(&key)?.permissions().mode() & 0o777, 0o600);
    }
    t.daemon.restart()?;
    assert_eq!(t.ca_pem()?, before, "the same CA after a restart");
    let ca = t.write_ca()?;
    let out = t.psql_conn(
        &format!("sslmode=verify-full sslrootcert={}", ca.display()),
        &["select 'trusted'"],
    );
    ensure!(out.status.success(), "psql after restart: {}", stderr(&out));
    assert_eq!(stdout(&out), "trusted");
    Ok(())
}

#[test]
fn bad_input_garbage_instead_of_a_tls_client_hello() -> Result<()> {
    let (t, r) = bad_input("tls-garbage")?;
    assert_eq!(r["answer"], "S", "{r}");
    assert_eq!(r["closed"], true, "{r}");
    let errors = protocol_errors(&t)?;
    assert!(
        errors.iter().any(|e| e["detail"]["phase"] == "client_tls"),
        "{errors:#?}"
    );
    Ok(())
}

/// A statement typed on psql's command line holds what the target's detectors mask: the
/// session's record of the process (psql's command line and that of `timeout` above it) and
/// the approver's view of it are masked as the statement log is.
#[test]
fn a_statement_on_psqls_command_line_is_recorded_and_shown_to_approvers_masked() -> Result<()> {
    let t = Pg::start()?;
    let secret = "alice@example.com";
    let select = format!("select count(*) from users where email = '{secret}'");
    // The SELECT runs, then the GRANT waits for approval (psql stops at neither).
    let (out, approval) = std::thread::scope(|scope| -> Result<(Output, String)> {
        let job = scope.spawn(|| t.psql(&["-c", &select, "-c", "GRANT SELECT ON users TO PUBLIC"]));
        let mut id = None;
        gateway_e2e::wait_until(std::time::Duration::from_secs(10), || {
            id = t
                .daemon
                .pending_approval()
                .and_then(|a| a["id"].as_str().map(str::to_string));
            id.is_some()
        });
        let id = id.context("no pending approval request")?;
        let shown = [
            t.daemon.cli(&["approvals", "show", &id]),
            t.daemon.cli(&["approvals", "show", &id, "--json"]),
        ]
        .iter()
        .map(stdout)
        .collect::<Vec<_>>()
        .join("\n");
        let approve = t.daemon.cli(&["approvals", "approve", &id]);
        ensure!(approve.status.success(), "{}", stderr(&approve));
        Ok((job.join().expect("psql thread"), shown))
    })?;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).lines().next(), Some("1"), "{}", stdout(&out));
    assert!(
        !approval.contains(secret) && approval.contains("[masked:email]"),
        "{approval}"
    );
    let session = t.daemon.sessions()?[0]["id"].to_string();
    let json = t.daemon.show_session(&session)?;
    let masked = |cmdline: &Value| {
        cmdline.as_array().is_some_and(|a| {
            a.iter()
                .any(|arg| arg.as_str().is_some_and(|x| x.contains("[masked:email]")))
        })
    };
    let process = &json["process"];
    assert!(masked(&process["cmdline"]), "{process}");
    assert!(
        process["ancestry"].as_array().is_some_and(|a| a
            .iter()
            .any(|p| p["comm"] == "timeout" && masked(&p["cmdline"]))),
        "{process}"
    );
    assert!(!json.to_string().contains(secret), "{json}");
    let text = stdout(&t.daemon.cli(&["sessions", "show", &session]));
    assert!(
        !text.contains(secret) && text.contains("[masked:email]"),
        "{text}"
    );
    Ok(())
}
