use super::*;
use crate::identity::Identity;
use crate::record::EventKind;

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir =
        std::env::temp_dir().join(format!("gateway-store-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn session(destination: &str) -> NewSession {
    NewSession {
        kind: SessionKind::Proxied,
        job_id: Some("job-1".into()),
        target: Some("db".into()),
        protocol: Some("tcp".into()),
        destination: destination.into(),
        process: Some(ProcessInfo {
            pid: 42,
            tid: 43,
            uid: 1000,
            gid: 1000,
            comm: "psql".into(),
            exe: Some("/usr/bin/psql".into()),
            cmdline: Some(vec!["psql".into(), "-h".into(), "db".into()]),
            cmdline_cut: true,
            verified: true,
            cgroup_id: 7,
            container: Some(crate::record::ContainerInfo {
                id: "c0ffee".into(),
                name: Some("job-db".into()),
                image: Some("debian:12".into()),
                verified: true,
            }),
            ancestry: vec![crate::record::Ancestor {
                pid: 40,
                comm: "bash".into(),
                exe: Some("/usr/bin/bash".into()),
                cmdline: Some(vec!["bash".into(), "-c".into(), "psql".into()]),
                cmdline_cut: false,
            }],
        }),
        identity: Identity::unauthenticated(),
        decision: "allow".into(),
        rule: Some("r".into()),
        reason: None,
        started_at: now(),
        ended_at: None,
        path: None,
        cookie: None,
    }
}

#[tokio::test]
async fn sessions_and_events_round_trip_and_survive_reopening() {
    let dir = temp_dir("roundtrip");
    let store = Store::open(&dir).unwrap();
    let id = store
        .insert_session(session("10.0.0.5:5432"))
        .await
        .unwrap();
    store
        .append_event(id, EventKind::Sql, serde_json::json!({ "sql": "select 1" }))
        .await
        .unwrap();
    store.end_session(
        id,
        SessionEnd {
            bytes_up: 10,
            bytes_down: 20,
        },
    );
    let second = store
        .insert_session(session("10.0.0.6:5432"))
        .await
        .unwrap();
    assert!(second > id);

    // A fresh store over the same directory sees everything that was acknowledged.
    drop(store);
    let store = Store::open(&dir).unwrap();
    let list = store.list_sessions(10).await.unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0].id, id, "oldest first");
    assert_eq!(list[0].bytes_up, 10);
    assert_eq!(list[0].bytes_down, 20);
    assert!(list[0].ended_at.is_some());
    let shown = store.session(id).await.unwrap();
    assert_eq!(
        shown.process.as_ref().unwrap().cmdline.as_ref().unwrap()[2],
        "db"
    );
    assert!(shown.process.as_ref().unwrap().cmdline_cut);
    // Container and ancestry come back as recorded.
    assert_eq!(shown.process, session("10.0.0.1:5432").process);
    assert_eq!(shown.events.len(), 1);
    assert_eq!(shown.events[0].detail["sql"], "select 1");
    assert!(matches!(
        store.session(999).await,
        Err(StoreError::NotFound(_))
    ));
    let limited = store.list_sessions(1).await.unwrap();
    assert_eq!(limited.len(), 1);
    assert_eq!(limited[0].id, second, "the limit keeps the newest");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_failing_write_leaves_nothing_and_does_not_spoil_the_batch() {
    let dir = temp_dir("savepoint");
    let store = Store::open(&dir).unwrap();
    let failing = store.call(|c| {
        c.execute(
            "INSERT INTO events (session_id, at, kind) VALUES (1, 'x', 'half')",
            [],
        )?;
        c.execute("INSERT INTO no_such_table VALUES (1)", [])?;
        Ok(())
    });
    let fine = store.insert_session(session("10.0.0.7:1"));
    let (failing, fine) = tokio::join!(failing, fine);
    assert!(failing.is_err());
    assert!(fine.is_ok());
    let half: i64 = store
        .call(|c| Ok(c.query_row("SELECT count(*) FROM events", [], |r| r.get(0))?))
        .await
        .unwrap();
    assert_eq!(half, 0, "the failed closure's first insert was rolled back");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn jobs_are_listed_until_ended() {
    let dir = temp_dir("jobs");
    let store = Store::open(&dir).unwrap();
    let job = JobRecord {
        id: "job-a".into(),
        cgroup_path: "/sys/fs/cgroup/x".into(),
        cgroup_id: 9,
        owned: true,
        identity: Identity::unauthenticated(),
        binding_expires_at: None,
        created_at: now(),
        ended_at: None,
    };
    store.insert_job(job.clone()).await.unwrap();
    assert_eq!(store.active_jobs().await.unwrap(), vec![job.clone()]);
    // A bound job keeps its issuer, claims and binding deadline across a restart of the store.
    let bound = JobRecord {
        id: "job-b".into(),
        cgroup_id: 10,
        identity: Identity {
            issuer: Some("https://issuer.test".into()),
            subject: "repo:acme/app:ref:refs/heads/main".into(),
            claims: [("repository".to_string(), serde_json::json!("acme/app"))].into(),
        },
        binding_expires_at: Some("2026-11-26T06:00:00.000Z".into()),
        ..job.clone()
    };
    store.insert_job(bound.clone()).await.unwrap();
    drop(store);
    let store = Store::open(&dir).unwrap();
    assert_eq!(store.active_jobs().await.unwrap(), vec![job, bound]);
    store.end_job("job-b".into()).await.unwrap();
    store.end_job("job-a".into()).await.unwrap();
    assert!(store.active_jobs().await.unwrap().is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn sessions_left_open_by_a_crash_are_closed_with_an_event() {
    let dir = temp_dir("interrupted");
    let store = Store::open(&dir).unwrap();
    let open = store.insert_session(session("10.0.0.8:1")).await.unwrap();
    let closed = store.insert_session(session("10.0.0.9:1")).await.unwrap();
    store.end_session(closed, SessionEnd::default());
    assert_eq!(store.close_interrupted_sessions().await.unwrap(), 1);
    let shown = store.session(open).await.unwrap();
    assert!(shown.summary.ended_at.is_some());
    assert_eq!(shown.events.last().unwrap().kind, "interrupted");
    assert!(store.session(closed).await.unwrap().events.is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

/// What a `kill -9` between the journal write and its application leaves: records in the
/// journal only. Reopening applies them before anything reads the store.
#[tokio::test]
async fn acknowledged_records_survive_a_crash_before_they_are_applied() {
    let dir = temp_dir("crash");
    let store = Store::open_unapplied(&dir).unwrap();
    let id = store
        .insert_session_with(
            session("10.0.0.5:1"),
            vec![(
                EventKind::UpstreamConnected,
                serde_json::json!({ "preconnected": true }),
            )],
        )
        .await
        .unwrap();
    store
        .append_events(
            id,
            vec![
                (EventKind::SqlResult, serde_json::json!({ "seq": 1 })),
                (EventKind::Sql, serde_json::json!({ "sql": "select 2" })),
            ],
        )
        .await
        .unwrap();
    store.close_session(
        id,
        vec![(EventKind::Closed, serde_json::json!({}))],
        SessionEnd {
            bytes_up: 3,
            bytes_down: 4,
        },
    );
    let open = store.insert_session(session("10.0.0.6:1")).await.unwrap();
    drop(store);

    let store = Store::open(&dir).unwrap();
    let shown = store.session(id).await.unwrap();
    let kinds: Vec<&str> = shown.events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["upstream_connected", "sql_result", "sql", "closed"]);
    assert_eq!(shown.events[2].detail["sql"], "select 2");
    assert_eq!(shown.summary.bytes_down, 4);
    assert!(shown.summary.ended_at.is_some());
    // Applied before the daemon closes what its predecessor left open.
    assert_eq!(store.close_interrupted_sessions().await.unwrap(), 1);
    let next = store.insert_session(session("10.0.0.7:1")).await.unwrap();
    assert!(next > open, "ids are not reused after a replay");
    drop(store);

    // Applied records are not applied twice.
    let store = Store::open(&dir).unwrap();
    assert_eq!(store.session(id).await.unwrap().events.len(), 4);
    assert_eq!(store.list_sessions(10).await.unwrap().len(), 3);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Cuts the last 7 bytes off a journal, as a crash in the middle of its last write would.
fn tear_last_write(journal: &std::path::Path) {
    let len = std::fs::metadata(journal).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(journal)
        .unwrap()
        .set_len(len - 7)
        .unwrap();
}

#[tokio::test]
async fn a_torn_last_record_is_ignored_on_replay() {
    let dir = temp_dir("torn");
    let store = Store::open_unapplied(&dir).unwrap();
    let kept = store.insert_session(session("10.0.0.5:1")).await.unwrap();
    let journal = dir.join("gateway.journal");
    let whole = std::fs::metadata(&journal).unwrap().len();
    let torn = store.insert_session(session("10.0.0.6:1")).await.unwrap();
    drop(store);
    // A write cut short by the crash: the second frame lost its last bytes.
    assert!(std::fs::metadata(&journal).unwrap().len() > whole + 20);
    tear_last_write(&journal);

    let store = Store::open(&dir).unwrap();
    assert!(store.session(kept).await.is_ok());
    assert!(matches!(
        store.session(torn).await,
        Err(StoreError::NotFound(_))
    ));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Records written together (one `write()`) are separate frames: a crash that tears the write
/// keeps the whole ones before the tear.
#[tokio::test]
async fn a_torn_write_of_several_records_keeps_the_whole_ones() {
    let dir = temp_dir("torn-many");
    let store = Store::open_unapplied(&dir).unwrap();
    let id = store
        .insert_session_with(
            session("10.0.0.5:1"),
            vec![(EventKind::UpstreamConnected, serde_json::json!({}))],
        )
        .await
        .unwrap();
    drop(store);
    tear_last_write(&dir.join("gateway.journal"));

    let store = Store::open(&dir).unwrap();
    let shown = store.session(id).await.unwrap();
    assert!(shown.events.is_empty(), "{:?}", shown.events);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_rotated_journal_is_replayed_before_the_current_one() {
    let dir = temp_dir("rotated");
    let journal = dir.join("gateway.journal");
    let store = Store::open_unapplied(&dir).unwrap();
    let id = store.insert_session(session("10.0.0.5:1")).await.unwrap();
    let first = std::fs::metadata(&journal).unwrap().len() as usize;
    store.note_event(id, EventKind::Closed, serde_json::json!({}));
    drop(store);
    // As if the daemon had moved the journal aside after the session and crashed before
    // applying either file (the event needs its session in the table first).
    let bytes = std::fs::read(&journal).unwrap();
    std::fs::write(dir.join("gateway.journal.1"), &bytes[..first]).unwrap();
    std::fs::write(&journal, &bytes[first..]).unwrap();

    let store = Store::open(&dir).unwrap();
    let shown = store.session(id).await.unwrap();
    assert_eq!(shown.events.len(), 1);
    assert!(!dir.join("gateway.journal.1").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_long_event_log_is_read_page_by_page_without_gaps() {
    let dir = temp_dir("pages");
    let store = Store::open(&dir).unwrap();
    let id = store.insert_session(session("10.0.0.5:1")).await.unwrap();
    for n in 0..25 {
        store
            .append_event(id, EventKind::Sql, serde_json::json!({ "seq": n }))
            .await
            .unwrap();
    }
    let (mut seen, mut after, mut pages) = (Vec::new(), 0, 0);
    loop {
        let page = store.session_page(id, after, 10).await.unwrap();
        assert!(page.events.len() <= 10);
        seen.extend(
            page.events
                .iter()
                .map(|e| e.detail["seq"].as_u64().unwrap()),
        );
        pages += 1;
        match page.more_after {
            Some(next) => after = next,
            None => break,
        }
    }
    assert_eq!(seen, (0..25).collect::<Vec<u64>>());
    assert_eq!(pages, 3);
    // Exactly one page's worth: no empty page announced.
    let whole = store.session_page(id, 0, 25).await.unwrap();
    assert_eq!((whole.events.len(), whole.more_after), (25, None));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_record_that_cannot_be_applied_leaves_the_rest_of_its_batch_in_place() {
    let dir = temp_dir("bad-record");
    let store = Store::open(&dir).unwrap();
    let id = store.insert_session(session("10.0.0.5:1")).await.unwrap();
    store.note_event(id, EventKind::Sql, serde_json::json!({ "seq": 1 }));
    // No such session: the foreign key refuses this one.
    store.note_event(id + 1000, EventKind::Sql, serde_json::json!({ "seq": 2 }));
    store.note_event(id, EventKind::Sql, serde_json::json!({ "seq": 3 }));
    let shown = store.session(id).await.unwrap();
    let seqs: Vec<u64> = shown
        .events
        .iter()
        .map(|e| e.detail["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 3]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_record_larger_than_replay_reads_is_refused_when_written() {
    use super::journal::{Encoded, EventRow, JournalError, Record};
    let huge = Record::Events {
        session_id: 1,
        events: vec![EventRow {
            kind: "x".into(),
            at: String::new(),
            detail: serde_json::value::to_raw_value(&"a".repeat(65 * 1024 * 1024)).unwrap(),
            statement: None,
        }],
    };
    assert!(matches!(
        Encoded::new(&huge),
        Err(JournalError::TooLarge(_))
    ));
    let small = Record::Events {
        session_id: 1,
        events: vec![],
    };
    assert!(Encoded::new(&small).is_ok());
}

#[tokio::test]
async fn a_database_of_schema_8_opens_with_its_events_and_their_ids() {
    let dir = temp_dir("schema8");
    std::fs::create_dir_all(&dir).unwrap();
    {
        let conn = rusqlite::Connection::open(dir.join("gateway.db")).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        super::schema::migrate_to(&conn, 8).unwrap();
        conn.execute_batch(
            r#"INSERT INTO sessions (id, kind, destination, identity, decision, started_at)
                   VALUES (3, 'proxied', '10.0.0.5:5432', 'unauthenticated', 'allow',
                           '2026-01-01T00:00:00.000Z');
               INSERT INTO events (id, session_id, at, kind, detail) VALUES
                   (5, 3, '2026-01-01T00:00:01.000Z', 'sql', '{"sql":"select 1"}'),
                   (9, 3, '2026-01-01T00:00:02.000Z', 'sql_result', '{"rows":1}');"#,
        )
        .unwrap();
    }
    let store = Store::open(&dir).unwrap();
    let shown = store.session(3).await.unwrap();
    let events: Vec<_> = shown
        .events
        .iter()
        .map(|e| (e.id, e.kind.as_str(), e.at.as_str(), e.detail.to_string()))
        .collect();
    assert_eq!(
        events,
        [
            (
                5,
                "sql",
                "2026-01-01T00:00:01.000Z",
                r#"{"sql":"select 1"}"#.to_string()
            ),
            (
                9,
                "sql_result",
                "2026-01-01T00:00:02.000Z",
                r#"{"rows":1}"#.to_string()
            ),
        ]
    );
    // New events follow the old ones; the table no longer keeps a sequence per insert.
    store
        .append_event(3, EventKind::Closed, serde_json::json!({}))
        .await
        .unwrap();
    let (version, events_sql, next) = store
        .call(|c| {
            let version: i64 = c.pragma_query_value(None, "user_version", |r| r.get(0))?;
            let sql: String = c.query_row(
                "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'events'",
                [],
                |r| r.get(0),
            )?;
            let next: i64 = c.query_row("SELECT max(id) FROM events", [], |r| r.get(0))?;
            Ok((version, sql, next))
        })
        .await
        .unwrap();
    assert_eq!(version, 10);
    assert!(!events_sql.contains("AUTOINCREMENT"), "{events_sql}");
    assert_eq!(next, 10);
    assert_eq!(store.session(3).await.unwrap().events.len(), 3);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A statement log as the PostgreSQL layer writes it: the `sql` event of statement `seq`
/// (write-ahead), the outcome of the one before it in the same journal record.
fn statement(store: &Store, id: i64, seq: u64, outcome_of: Option<u64>) {
    let mut events = Vec::new();
    if let Some(done) = outcome_of {
        events.push(outcome(done));
    }
    events.push(
        RenderedEvent::new(
            EventKind::Sql,
            &serde_json::json!({ "seq": seq, "sql": format!("select {seq}") }),
        )
        .unwrap()
        .of_statement(seq),
    );
    store.append_rendered(id, events).unwrap();
}

fn outcome(seq: u64) -> RenderedEvent {
    RenderedEvent::new(
        EventKind::SqlResult,
        &serde_json::json!({ "seq": seq, "rows": seq * 10 }),
    )
    .unwrap()
    .of_statement(seq)
}

/// What `sessions show` lists: (id, kind, seq).
async fn shown_events(store: &Store, id: i64) -> Vec<(i64, String, u64)> {
    store
        .session(id)
        .await
        .unwrap()
        .events
        .into_iter()
        .map(|e| (e.id, e.kind, e.detail["seq"].as_u64().unwrap_or_default()))
        .collect()
}

async fn stored_rows(store: &Store) -> i64 {
    store
        .call(|c| Ok(c.query_row("SELECT count(*) FROM events", [], |r| r.get(0))?))
        .await
        .unwrap()
}

fn kinds_and_seqs(events: &[(i64, String, u64)]) -> Vec<(&str, u64)> {
    events.iter().map(|(_, k, s)| (k.as_str(), *s)).collect()
}

#[tokio::test]
async fn a_statement_and_its_outcome_are_stored_as_one_row_and_shown_as_two_events() {
    let dir = temp_dir("one-row");
    // Without the background writer: each `session()` applies what is queued in one transaction.
    let store = Store::open_unapplied(&dir).unwrap();
    let id = store.insert_session(session("10.0.0.5:1")).await.unwrap();
    // Statement 1 and its outcome in one batch; statement 2's outcome arrives after its row was
    // stored by an earlier transaction.
    statement(&store, id, 1, None);
    statement(&store, id, 2, Some(1));
    let shown = shown_events(&store, id).await;
    assert_eq!(
        kinds_and_seqs(&shown),
        [("sql", 1), ("sql_result", 1), ("sql", 2)]
    );
    // Every shown event has an id of its own, in order, though the two are one row.
    assert!(shown.windows(2).all(|w| w[0].0 < w[1].0), "{shown:?}");
    assert_eq!(shown[0].0 + 1, shown[1].0);
    store.append_rendered(id, vec![outcome(2)]).unwrap();
    let shown = shown_events(&store, id).await;
    assert_eq!(
        kinds_and_seqs(&shown),
        [("sql", 1), ("sql_result", 1), ("sql", 2), ("sql_result", 2)]
    );
    assert_eq!(stored_rows(&store).await, 2);
    let detail = store.session(id).await.unwrap().events[3].detail.clone();
    assert_eq!(detail, serde_json::json!({ "seq": 2, "rows": 20 }));

    // An outcome whose statement row is not there (a statement this build did not number) is
    // kept as an event of its own rather than lost.
    store.append_rendered(id, vec![outcome(7)]).unwrap();
    let shown = shown_events(&store, id).await;
    assert_eq!(
        shown.last().map(|e| (e.1.as_str(), e.2)),
        Some(("sql_result", 7))
    );
    assert_eq!(stored_rows(&store).await, 3);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_crash_after_only_the_write_ahead_record_keeps_the_statement() {
    let dir = temp_dir("one-row-crash");
    let store = Store::open_unapplied(&dir).unwrap();
    let id = store.insert_session(session("10.0.0.5:1")).await.unwrap();
    statement(&store, id, 1, None);
    statement(&store, id, 2, Some(1));
    // The daemon dies with statement 2 forwarded: only its write-ahead record is in the journal.
    drop(store);

    let store = Store::open(&dir).unwrap();
    let shown = shown_events(&store, id).await;
    assert_eq!(
        kinds_and_seqs(&shown),
        [("sql", 1), ("sql_result", 1), ("sql", 2)]
    );
    assert_eq!(stored_rows(&store).await, 2);
    // The replayed statement row takes an outcome that comes later, like any other.
    store.append_rendered(id, vec![outcome(2)]).unwrap();
    assert_eq!(
        kinds_and_seqs(&shown_events(&store, id).await),
        [("sql", 1), ("sql_result", 1), ("sql", 2), ("sql_result", 2)]
    );
    drop(store);
    // Replay does not apply twice.
    let store = Store::open(&dir).unwrap();
    assert_eq!(stored_rows(&store).await, 2);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn pages_of_one_row_statements_hold_limit_events_and_lose_or_repeat_none() {
    let dir = temp_dir("one-row-pages");
    let store = Store::open_unapplied(&dir).unwrap();
    let id = store.insert_session(session("10.0.0.5:1")).await.unwrap();
    for seq in 1..=5 {
        statement(&store, id, seq, (seq > 1).then(|| seq - 1));
    }
    store.append_rendered(id, vec![outcome(5)]).unwrap();
    let (mut seen, mut ids, mut after) = (Vec::new(), Vec::new(), 0);
    for _ in 0..20 {
        let page = store.session_page(id, after, 3).await.unwrap();
        assert!(
            !page.events.is_empty() && page.events.len() <= 3,
            "{page:?}"
        );
        seen.extend(
            page.events
                .iter()
                .map(|e| (e.kind.clone(), e.detail["seq"].as_u64().unwrap())),
        );
        ids.extend(page.events.iter().map(|e| e.id));
        match page.more_after {
            Some(next) => {
                assert_eq!(page.events.len(), 3);
                after = next;
            }
            None => break,
        }
    }
    let expected: Vec<(String, u64)> = (1..=5)
        .flat_map(|n| [("sql".to_string(), n), ("sql_result".to_string(), n)])
        .collect();
    assert_eq!(seen, expected);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_database_of_schema_9_keeps_its_two_row_statements_and_adds_one_row_ones() {
    let dir = temp_dir("schema9");
    std::fs::create_dir_all(&dir).unwrap();
    {
        let conn = rusqlite::Connection::open(dir.join("gateway.db")).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        super::schema::migrate_to(&conn, 9).unwrap();
        conn.execute_batch(
            r#"INSERT INTO sessions (id, kind, destination, identity, decision, started_at)
                   VALUES (3, 'proxied', '10.0.0.5:5432', 'unauthenticated', 'allow',
                           '2026-01-01T00:00:00.000Z');
               INSERT INTO events (id, session_id, at, kind, detail) VALUES
                   (5, 3, '2026-01-01T00:00:01.000Z', 'sql', '{"seq":1}'),
                   (6, 3, '2026-01-01T00:00:02.000Z', 'sql_result', '{"seq":1}');"#,
        )
        .unwrap();
    }
    let store = Store::open_unapplied(&dir).unwrap();
    let before = store.session(3).await.unwrap().events;
    assert_eq!(
        before
            .iter()
            .map(|e| (e.id, e.kind.as_str(), e.at.as_str()))
            .collect::<Vec<_>>(),
        [
            (5, "sql", "2026-01-01T00:00:01.000Z"),
            (6, "sql_result", "2026-01-01T00:00:02.000Z")
        ]
    );
    // The session goes on under this build: statement 2 is one row after the two old ones.
    statement(&store, 3, 2, None);
    store.append_rendered(3, vec![outcome(2)]).unwrap();
    assert_eq!(
        kinds_and_seqs(&shown_events(&store, 3).await),
        [("sql", 1), ("sql_result", 1), ("sql", 2), ("sql_result", 2)]
    );
    assert_eq!(stored_rows(&store).await, 3);
    let version: i64 = store
        .call(|c| Ok(c.pragma_query_value(None, "user_version", |r| r.get(0))?))
        .await
        .unwrap();
    assert_eq!(version, 10);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Frames `payload` as the journal does, with sequence number `seq`.
fn frame(seq: u64, payload: &str) -> Vec<u8> {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&seq.to_le_bytes());
    crc.update(payload.as_bytes());
    let mut out = Vec::new();
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(payload.as_bytes());
    out
}

#[tokio::test]
async fn a_journal_of_an_earlier_build_with_details_as_text_is_replayed() {
    let dir = temp_dir("old-journal");
    let store = Store::open(&dir).unwrap();
    let id = store.insert_session(session("10.0.0.5:1")).await.unwrap();
    drop(store);
    // What the previous build left unapplied: the detail as a JSON string inside the record.
    let old = format!(
        r#"{{"Events":{{"session_id":{id},"events":[{{"kind":"sql","at":"2026-01-01T00:00:01.000Z","detail":"{{\"seq\":1,\"sql\":\"select 'a\\\"b'\"}}"}},{{"kind":"closed","at":"2026-01-01T00:00:02.000Z","detail":"null"}}]}}}}"#
    );
    let applied: u64 = rusqlite::Connection::open(dir.join("gateway.db"))
        .unwrap()
        .query_row("SELECT applied FROM journal_state", [], |r| r.get(0))
        .unwrap();
    std::fs::write(dir.join("gateway.journal"), frame(applied + 1, &old)).unwrap();

    let store = Store::open(&dir).unwrap();
    let shown = store.session(id).await.unwrap().events;
    assert_eq!(shown.len(), 2, "{shown:?}");
    assert_eq!(shown[0].detail["sql"], "select 'a\"b'");
    assert_eq!(shown[1].detail, serde_json::Value::Null);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_event_detail_goes_into_the_journal_record_as_json_not_as_escaped_text() {
    use super::journal::{Encoded, EventRow, Record};
    let detail = serde_json::json!({ "sql": "select \"x\"" });
    let record = Record::Events {
        session_id: 1,
        events: vec![EventRow {
            kind: "sql".into(),
            at: "t".into(),
            detail: serde_json::value::to_raw_value(&detail).unwrap(),
            statement: Some(4),
        }],
    };
    let bytes = Encoded::new(&record).unwrap().into_payload_for_test();
    let text = String::from_utf8(bytes).unwrap();
    assert!(text.contains(r#""json":{"sql":"select \"x\""}"#), "{text}");
}

/// The kinds of a session's events, in stored order.
async fn event_kinds(store: &Store, id: i64) -> Vec<String> {
    let shown = store.session(id).await.unwrap();
    shown.events.iter().map(|e| e.kind.clone()).collect()
}

#[tokio::test]
async fn held_outcomes_go_with_the_next_record_and_readers_see_them_at_once() {
    let dir = temp_dir("held");
    let store = Store::open(&dir).unwrap();
    let id = store
        .insert_session(session("10.0.0.7:5432"))
        .await
        .unwrap();
    let held = HeldEvents::new(store.clone(), id);
    let event = |kind, n: u64| RenderedEvent::of_value(kind, &serde_json::json!({ "seq": n }));
    held.append(vec![event(EventKind::Sql, 1)]).unwrap();
    held.hold(event(EventKind::SqlResult, 1));
    assert!(!held.is_empty());
    held.append(vec![event(EventKind::Sql, 2)]).unwrap();
    assert!(
        held.is_empty(),
        "taken along by the next write-ahead record"
    );
    held.hold(event(EventKind::SqlResult, 2));
    // A reader does not wait for the session: what it holds is stored first.
    assert_eq!(
        event_kinds(&store, id).await,
        ["sql", "sql_result", "sql", "sql_result"]
    );
    assert!(held.is_empty());
    // What a session still holds when it ends is stored.
    held.hold(event(EventKind::SqlResult, 3));
    drop(held);
    assert_eq!(event_kinds(&store, id).await.len(), 5);
    let _ = std::fs::remove_dir_all(&dir);
}
