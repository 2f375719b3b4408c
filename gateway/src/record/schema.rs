//! Schema of the session store and its migrations (`PRAGMA user_version`).
//!
//! The same tables are meant to live on PostgreSQL for fleets; keep to types both understand
//! (INTEGER, TEXT, timestamps as RFC 3339 text in UTC).

use rusqlite::Connection;

use super::StoreError;

const MIGRATIONS: &[&str] = &[
    // 1: jobs, sessions, events.
    r#"
    CREATE TABLE jobs (
        id            TEXT PRIMARY KEY,
        cgroup_path   TEXT NOT NULL,
        cgroup_id     INTEGER NOT NULL,
        owned         INTEGER NOT NULL,          -- 1: created by `gateway run` (removed at its end)
        issuer        TEXT,
        subject       TEXT NOT NULL,
        claims        TEXT NOT NULL DEFAULT '{}',
        created_at    TEXT NOT NULL,
        ended_at      TEXT
    );
    CREATE INDEX jobs_active ON jobs (ended_at);

    CREATE TABLE sessions (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        kind          TEXT NOT NULL,             -- proxied | anomaly | kernel
        job_id        TEXT,
        target        TEXT,
        protocol      TEXT,
        destination   TEXT NOT NULL,
        pid           INTEGER,
        tid           INTEGER,
        uid           INTEGER,
        gid           INTEGER,
        comm          TEXT,
        exe           TEXT,
        cmdline       TEXT,                      -- JSON array
        process_verified INTEGER NOT NULL DEFAULT 0,
        cgroup_id     INTEGER,
        issuer        TEXT,
        identity      TEXT NOT NULL,             -- subject or 'unauthenticated'
        claims        TEXT NOT NULL DEFAULT '{}',
        decision      TEXT NOT NULL,
        rule          TEXT,
        reason        TEXT,
        started_at    TEXT NOT NULL,
        ended_at      TEXT,
        bytes_up      INTEGER NOT NULL DEFAULT 0,
        bytes_down    INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX sessions_job ON sessions (job_id);

    CREATE TABLE events (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        session_id    INTEGER NOT NULL REFERENCES sessions(id),
        at            TEXT NOT NULL,
        kind          TEXT NOT NULL,
        detail        TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX events_session ON events (session_id, id);
    "#,
    // 2: approval requests, their votes, and standing grants.
    r#"
    CREATE TABLE approvals (
        id                TEXT PRIMARY KEY,
        session_id        INTEGER REFERENCES sessions(id),
        created_at        TEXT NOT NULL,
        deadline          TEXT NOT NULL,
        status            TEXT NOT NULL,         -- pending | approved | denied | expired | abandoned
        target            TEXT NOT NULL,
        rule              TEXT NOT NULL,
        kind              TEXT NOT NULL,         -- sql | ssh_exec | sftp | …
        operation         TEXT NOT NULL,         -- what would run, as people read it
        detail            TEXT NOT NULL DEFAULT '{}',
        requester_issuer  TEXT,
        requester_subject TEXT NOT NULL,
        requester_email   TEXT,
        approvers         TEXT NOT NULL,         -- JSON array of approver groups
        quorum            INTEGER NOT NULL,
        decided_at        TEXT,
        reason            TEXT,
        grant_seconds     INTEGER
    );
    CREATE INDEX approvals_status ON approvals (status, created_at);

    CREATE TABLE approval_votes (
        id                INTEGER PRIMARY KEY AUTOINCREMENT,
        approval_id       TEXT NOT NULL REFERENCES approvals(id),
        approver          TEXT NOT NULL,
        display           TEXT NOT NULL,
        at                TEXT NOT NULL,
        approve           INTEGER NOT NULL,
        reason            TEXT
    );

    CREATE TABLE grants (
        id                INTEGER PRIMARY KEY AUTOINCREMENT,
        approval_id       TEXT NOT NULL REFERENCES approvals(id),
        rule              TEXT NOT NULL,
        target            TEXT NOT NULL,
        issuer            TEXT,
        subject           TEXT NOT NULL,
        created_at        TEXT NOT NULL,
        expires_at        TEXT NOT NULL,
        approved_by       TEXT NOT NULL
    );
    "#,
    // 3: how long a job's identity binding lasts (NULL: unauthenticated, no limit).
    r#"
    ALTER TABLE jobs ADD COLUMN binding_expires_at TEXT;
    "#,
    // 4: the last write-ahead journal record folded into these tables (journal.rs).
    r#"
    CREATE TABLE journal_state (
        id            INTEGER PRIMARY KEY CHECK (id = 1),
        applied       INTEGER NOT NULL
    );
    INSERT INTO journal_state (id, applied) VALUES (1, 0);
    "#,
    // 5: what each approving vote asked for (a standing approval) and the person who cast it.
    r#"
    ALTER TABLE approval_votes ADD COLUMN for_seconds INTEGER;
    ALTER TABLE approval_votes ADD COLUMN person TEXT;
    "#,
    // 6: whether a session's command line was cut at the 4 KiB the gateway keeps.
    r#"
    ALTER TABLE sessions ADD COLUMN cmdline_cut INTEGER NOT NULL DEFAULT 0;
    "#,
    // 7: the container a session's process ran in and its ancestry inside the job (JSON).
    r#"
    ALTER TABLE sessions ADD COLUMN container TEXT;
    ALTER TABLE sessions ADD COLUMN ancestry TEXT;
    "#,
    // 8: how a connection to a target travelled (proxy | kernel; NULL for other records), and
    // the socket cookie a kernel-path session's end is recorded under.
    r#"
    ALTER TABLE sessions ADD COLUMN path TEXT;
    ALTER TABLE sessions ADD COLUMN cookie INTEGER;
    CREATE INDEX sessions_open_kernel ON sessions (cookie) WHERE path = 'kernel' AND ended_at IS NULL;
    "#,
    // 9: events without AUTOINCREMENT. Events are never deleted, so the largest id is never
    // reused; AUTOINCREMENT only cost an update of `sqlite_sequence` per stored event. Ids are
    // kept as they were (pages of `sessions show` go by id).
    r#"
    CREATE TABLE events_v9 (
        id            INTEGER PRIMARY KEY,
        session_id    INTEGER NOT NULL REFERENCES sessions(id),
        at            TEXT NOT NULL,
        kind          TEXT NOT NULL,
        detail        TEXT NOT NULL DEFAULT '{}'
    );
    INSERT INTO events_v9 (id, session_id, at, kind, detail)
        SELECT id, session_id, at, kind, detail FROM events ORDER BY id;
    DROP TABLE events;
    ALTER TABLE events_v9 RENAME TO events;
    CREATE INDEX events_session ON events (session_id, id);
    "#,
    // 10: a statement and its outcome in one row: a `sql` event keeps the number of its
    // statement in the session and, once known, the `sql_result` event's detail and time (rows
    // written before stay as they are: readers show both shapes alike).
    r#"
    ALTER TABLE events ADD COLUMN statement INTEGER;
    ALTER TABLE events ADD COLUMN result TEXT;
    ALTER TABLE events ADD COLUMN result_at TEXT;
    "#,
];

pub(super) fn migrate(conn: &Connection) -> Result<(), StoreError> {
    migrate_to(conn, MIGRATIONS.len())
}

/// Migrates up to schema version `upto` (tests build databases of earlier versions with it).
pub(super) fn migrate_to(conn: &Connection, upto: usize) -> Result<(), StoreError> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let supported = MIGRATIONS.len() as i64;
    if version > supported {
        return Err(StoreError::SchemaTooNew {
            found: version,
            supported,
        });
    }
    for (i, sql) in MIGRATIONS
        .iter()
        .enumerate()
        .take(upto)
        .skip(version as usize)
    {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}
