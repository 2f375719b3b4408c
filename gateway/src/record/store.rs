//! The session store: one SQLite database (WAL) with one writer connection, fed through a
//! write-ahead journal.
//!
//! Session records (sessions, their events and ends) are appended to the journal (`journal.rs`)
//! with one `write()` and queued in memory, under one lock that gives both the same order; the
//! append is the durability point (a `kill -9` of the daemon loses nothing it acknowledged). A
//! background thread folds queued records into SQLite in batches and stores, in the same
//! transaction, the sequence number of the last one applied; at startup, journal records past it
//! are applied before anything else reads the store. Queries and the approvals' read-modify-write
//! work (`call`) first apply everything queued, so they see every acknowledged record in order.

use parking_lot::{Condvar, Mutex};
use std::{
    collections::VecDeque,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicI64, Ordering},
    },
    thread::{self, JoinHandle},
};

use rusqlite::Connection;

use super::{
    journal::{self, Encoded, Journal, JournalError, Record},
    schema, sessions,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("session store {path}: {source}")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error("cannot create state directory {path}: {source}")]
    StateDir {
        path: String,
        source: std::io::Error,
    },
    #[error("session store: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("session store: {0}")]
    Json(#[from] serde_json::Error),
    #[error("session store: {0}")]
    Journal(#[from] JournalError),
    #[error(
        "session store schema version {found} is newer than this gateway understands ({supported})"
    )]
    SchemaTooNew { found: i64, supported: i64 },
    #[error("session store: commit failed: {0}")]
    Commit(String),
    #[error("the session store has shut down")]
    Closed,
    #[error("not found: {0}")]
    NotFound(String),
}

/// The journal and the records written to it but not yet applied, ordered by one lock.
struct Log {
    journal: Journal,
    queue: VecDeque<(u64, Record)>,
    next_seq: u64,
    /// Last sequence number in the rotated-out file, while that file still holds unapplied records.
    rotated_upto: Option<u64>,
    /// The background writer sleeps on `queued` (a notify costs a syscall, so only then).
    writer_waiting: bool,
    /// Since when, and why, appending to the journal fails (sessions are refused meanwhile).
    journal_failing: Option<Failure>,
    /// Since when, and why, folding records into SQLite fails (they wait in the journal).
    apply_failing: Option<Failure>,
}

/// A failure of the store that lasts until the next success.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Failure {
    pub since: String,
    pub error: String,
}

impl Failure {
    /// Follows one kind of failure: a success clears it; a failure that goes on keeps its first
    /// time and its latest error.
    fn track<T, E: std::fmt::Display>(slot: &mut Option<Failure>, result: &Result<T, E>) {
        match (result, slot.as_mut()) {
            (Ok(_), _) => *slot = None,
            (Err(e), Some(f)) => f.error = e.to_string(),
            (Err(e), None) => {
                *slot = Some(Failure {
                    since: sessions::now(),
                    error: e.to_string(),
                })
            }
        }
    }
}

/// How recording is going, for `gateway status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Health {
    pub journal_failing: Option<Failure>,
    pub apply_failing: Option<Failure>,
    /// Records in the journal not yet folded into SQLite.
    pub unapplied: usize,
}

struct Shared {
    conn: Mutex<Connection>,
    log: Mutex<Log>,
    queued: Condvar,
    next_session: AtomicI64,
    rotated_path: PathBuf,
    /// The last handle is gone: background threads end.
    closed: AtomicBool,
    /// Outcomes the live sessions hold back (`held.rs`), stored before each query.
    held: super::held::Registry,
}

#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
    _owner: Arc<Owner>,
    path: PathBuf,
}

/// Dropped with the last handle: stops the background writer and applies what is still queued
/// (a store reopened in the same process then finds nothing left to replay).
struct Owner {
    shared: Arc<Shared>,
    background: Option<JoinHandle<()>>,
    /// False for stores opened without a writer: dropping one leaves its records unapplied, as a
    /// crash would.
    apply_on_drop: bool,
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Relaxed);
        self.shared.queued.notify_all();
        if let Some(t) = self.background.take() {
            let _ = t.join();
        }
        if self.apply_on_drop
            && let Err(e) = apply_queued(&self.shared, usize::MAX)
        {
            tracing::error!(error = %e, "session store: applying the last records failed (they stay in the journal)");
        }
    }
}

/// Most records one background transaction takes.
const MAX_BATCH: usize = 2048;
/// How long the background writer lets records gather before a transaction.
const GATHER: std::time::Duration = std::time::Duration::from_millis(50);
/// A fully applied journal larger than this is emptied.
const CLEAR_AT: u64 = 256 * 1024;
/// A journal larger than this moves aside (to be deleted once applied) even while records keep
/// coming.
const ROTATE_AT: u64 = 16 * 1024 * 1024;

impl Store {
    /// Opens (creating if needed) `<state_dir>/gateway.db`, applies what the journal holds beyond
    /// it, and starts the background writer.
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        let shared = Self::open_shared(state_dir)?;
        let background = shared.clone();
        let thread = thread::Builder::new()
            .name("session-store".into())
            .spawn(move || run(&background))
            .expect("spawn session store thread");
        Ok(Store::new(shared, Some(thread), state_dir))
    }

    fn new(shared: Arc<Shared>, background: Option<JoinHandle<()>>, state_dir: &Path) -> Store {
        Store {
            _owner: Arc::new(Owner {
                shared: shared.clone(),
                apply_on_drop: background.is_some(),
                background,
            }),
            shared,
            path: state_dir.join("gateway.db"),
        }
    }

    /// [`Store::open`] without the background writer: records stay in the journal and the queue
    /// until a `call` applies them (tests use it to leave records unapplied, as a crash would).
    #[cfg(test)]
    pub(crate) fn open_unapplied(state_dir: &Path) -> Result<Store, StoreError> {
        Ok(Store::new(Self::open_shared(state_dir)?, None, state_dir))
    }

    fn open_shared(state_dir: &Path) -> Result<Arc<Shared>, StoreError> {
        std::fs::create_dir_all(state_dir).map_err(|source| StoreError::StateDir {
            path: state_dir.display().to_string(),
            source,
        })?;
        restrict_permissions(state_dir);
        let path = state_dir.join("gateway.db");
        let conn = open_connection(&path)?;
        // Checkpoints (which fsync) run on a connection of their own, off the writer's path.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        let (journal_path, rotated_path) = journal::paths(state_dir);
        let last_seq = replay(&conn, &[&rotated_path, &journal_path])?;
        match std::fs::remove_file(&rotated_path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(JournalError::Io {
                    path: rotated_path.display().to_string(),
                    source: e,
                }
                .into());
            }
            _ => {}
        }
        let journal = Journal::create(&journal_path)?;
        let next_session = sessions::next_session_id(&conn)?;
        let checkpointer = open_connection(&path)?;
        let shared = Arc::new(Shared {
            conn: Mutex::new(conn),
            log: Mutex::new(Log {
                journal,
                queue: VecDeque::new(),
                next_seq: last_seq + 1,
                rotated_upto: None,
                writer_waiting: false,
                journal_failing: None,
                apply_failing: None,
            }),
            queued: Condvar::new(),
            next_session: AtomicI64::new(next_session),
            rotated_path,
            closed: AtomicBool::new(false),
            held: Default::default(),
        });
        let weak = Arc::downgrade(&shared);
        thread::Builder::new()
            .name("session-store-checkpoint".into())
            .spawn(move || checkpoint_loop(checkpointer, &weak))
            .expect("spawn checkpoint thread");
        Ok(shared)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A fresh session id (ids are handed out here, so recording a session needs no commit).
    pub(crate) fn allocate_session_id(&self) -> i64 {
        self.shared.next_session.fetch_add(1, Ordering::Relaxed)
    }

    /// Writes `record` to the journal and queues it for SQLite; once this returns `Ok` the record
    /// survives a crash of the process, and every later `call` sees it.
    pub(crate) fn log(&self, record: Record) -> Result<(), StoreError> {
        // Encoding happens outside the lock; only the append and the queueing are ordered.
        let mut encoded = [Encoded::new(&record)?];
        self.append(&mut encoded, [record])
    }

    pub(super) fn held_registry(&self) -> &super::held::Registry {
        &self.shared.held
    }

    /// How recording is going.
    pub fn health(&self) -> Health {
        let log = self.shared.log.lock();
        Health {
            journal_failing: log.journal_failing.clone(),
            apply_failing: log.apply_failing.clone(),
            unapplied: log.queue.len(),
        }
    }

    /// [`Store::log`] for several records, in order, with one `write()`.
    pub(crate) fn log_all(&self, records: Vec<Record>) -> Result<(), StoreError> {
        let mut encoded = records
            .iter()
            .map(Encoded::new)
            .collect::<Result<Vec<_>, _>>()?;
        self.append(&mut encoded, records)
    }

    /// Writes `encoded` (the frames of `records`) to the journal and queues the records.
    fn append(
        &self,
        encoded: &mut [Encoded],
        records: impl IntoIterator<Item = Record>,
    ) -> Result<(), StoreError> {
        let mut log = self.shared.log.lock();
        let first = log.next_seq;
        let appended = log.journal.append(first, encoded);
        Failure::track(&mut log.journal_failing, &appended);
        appended?;
        log.next_seq += encoded.len() as u64;
        log.queue.extend((first..).zip(records));
        let wake = std::mem::take(&mut log.writer_waiting);
        drop(log);
        if wake {
            self.shared.queued.notify_one();
        }
        Ok(())
    }

    /// [`Store::log`] for records nobody waits for: a failure is logged.
    pub(crate) fn log_or_warn(&self, what: &'static str, record: Record) {
        warn_failed(what, self.log(record));
    }

    /// [`Store::log_all`] for records nobody waits for: a failure is logged.
    pub(crate) fn log_all_or_warn(&self, what: &'static str, records: Vec<Record>) {
        warn_failed(what, self.log_all(records));
    }

    /// Runs `f` in a transaction of its own and returns once it is committed (durable against a
    /// crash of the process: WAL, synchronous=NORMAL). Everything logged before is applied first,
    /// in the same transaction, so `f` sees every acknowledged record in order. For queries and
    /// transactional read-modify-write work; session records go through the journal.
    pub async fn call<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.call_blocking(f)
    }

    /// [`Store::call`] for threads outside the async runtime.
    pub fn call_blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        // What clients have received is on record for whoever looks.
        self.shared.held.store_all(self);
        let conn = self.shared.conn.lock();
        let earlier: Vec<(u64, Record)> = self.shared.log.lock().queue.drain(..).collect();
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            self.requeue(earlier);
            return Err(e.into());
        }
        let applied = apply_records(&conn, &earlier);
        let savepoint = conn.execute_batch("SAVEPOINT work").is_ok();
        let result = applied.map_err(StoreError::from).and_then(|()| f(&conn));
        if savepoint {
            if result.is_err() {
                let _ = conn.execute_batch("ROLLBACK TO work");
            }
            let _ = conn.execute_batch("RELEASE work");
        }
        let commit = commit(&conn);
        Failure::track(&mut self.shared.log.lock().apply_failing, &commit);
        if commit.is_err() {
            self.requeue(earlier);
        }
        drop(conn);
        match (result, commit) {
            (Ok(v), Ok(())) => Ok(v),
            (Err(e), _) => Err(e),
            (Ok(_), Err(e)) => Err(StoreError::Commit(e)),
        }
    }

    /// Puts records whose transaction failed back at the front of the queue (they are still in
    /// the journal; the next transaction tries again). Called with the connection locked.
    fn requeue(&self, records: Vec<(u64, Record)>) {
        let mut log = self.shared.log.lock();
        for r in records.into_iter().rev() {
            log.queue.push_front(r);
        }
    }
}

fn warn_failed(what: &'static str, result: Result<(), StoreError>) {
    if let Err(e) = result {
        tracing::error!(error = %e, "session store: {what} failed");
    }
}

fn restrict_permissions(dir: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    // Jobs must not read session records or recorded results.
    if let Err(e) = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot restrict state directory to 0700");
    }
}

pub(crate) fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let wrap = |source| StoreError::Open {
        path: path.display().to_string(),
        source,
    };
    let conn = Connection::open(path).map_err(wrap)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(wrap)?;
    // NORMAL in WAL mode: a commit survives a crash of the process (not necessarily of the machine).
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(wrap)?;
    conn.pragma_update(None, "foreign_keys", true)
        .map_err(wrap)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(wrap)?;
    schema::migrate(&conn)?;
    Ok(conn)
}

/// Applies the journal records past the last applied one (files oldest first); returns the
/// highest sequence number seen, applied or not.
fn replay(conn: &Connection, files: &[&Path]) -> Result<u64, StoreError> {
    let applied = applied_seq(conn)?;
    let mut last = applied;
    let mut pending = Vec::new();
    for file in files {
        for (seq, record) in journal::read(file)? {
            last = last.max(seq);
            if seq > applied {
                pending.push((seq, record));
            }
        }
    }
    if !pending.is_empty() {
        tracing::info!(
            records = pending.len(),
            "session store: applying journal records a previous daemon left unapplied"
        );
        conn.execute_batch("BEGIN IMMEDIATE")?;
        apply_records(conn, &pending)?;
        commit(conn).map_err(StoreError::Commit)?;
    }
    Ok(last)
}

fn applied_seq(conn: &Connection) -> Result<u64, StoreError> {
    let seq: i64 = conn.query_row("SELECT applied FROM journal_state WHERE id = 1", [], |r| {
        r.get(0)
    })?;
    Ok(seq as u64)
}

/// Applies records inside the open transaction and notes the last one as applied. The batch goes
/// in under one savepoint; only when a record fails is it redone with a savepoint per record, so
/// that the failing one is logged and leaves nothing behind while the others go in.
fn apply_records(conn: &Connection, records: &[(u64, Record)]) -> rusqlite::Result<()> {
    let Some((last, _)) = records.last() else {
        return Ok(());
    };
    conn.execute_batch("SAVEPOINT batch")?;
    let folded = sessions::Folded::of(records.iter().map(|(_, record)| record));
    if records
        .iter()
        .try_for_each(|(_, record)| sessions::apply(conn, record, &folded))
        .is_err()
    {
        conn.execute_batch("ROLLBACK TO batch")?;
        // One by one, each outcome joins its statement's row once that is stored.
        let alone = sessions::Folded::default();
        for (seq, record) in records {
            conn.execute_batch("SAVEPOINT record")?;
            if let Err(e) = sessions::apply(conn, record, &alone) {
                tracing::error!(seq, error = %e, "session store: a journal record could not be applied");
                conn.execute_batch("ROLLBACK TO record")?;
            }
            conn.execute_batch("RELEASE record")?;
        }
    }
    conn.execute_batch("RELEASE batch")?;
    conn.prepare_cached("UPDATE journal_state SET applied = ?1 WHERE id = 1")?
        .execute([*last as i64])?;
    Ok(())
}

/// Copies the WAL into the database every half second without blocking the writer. Ends with the
/// store.
fn checkpoint_loop(conn: Connection, shared: &std::sync::Weak<Shared>) {
    loop {
        thread::sleep(std::time::Duration::from_millis(500));
        if shared
            .upgrade()
            .is_none_or(|s| s.closed.load(Ordering::Relaxed))
        {
            return;
        }
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "session store checkpoint failed");
        }
    }
}

fn commit(conn: &Connection) -> Result<(), String> {
    conn.execute_batch("COMMIT").map_err(|e| {
        let _ = conn.execute_batch("ROLLBACK");
        tracing::error!(error = %e, "session store transaction failed");
        e.to_string()
    })
}

/// Applies up to `max` queued records in one transaction; returns the last one applied. On
/// failure they go back to the front of the queue (they are still in the journal).
fn apply_queued(shared: &Shared, max: usize) -> Result<Option<u64>, String> {
    // The connection is taken before the queue so that batches are applied in queue order.
    let conn = shared.conn.lock();
    let batch: Vec<(u64, Record)> = {
        let mut log = shared.log.lock();
        let n = log.queue.len().min(max);
        log.queue.drain(..n).collect()
    };
    let Some(&(last, _)) = batch.last() else {
        return Ok(None);
    };
    let applied = conn
        .execute_batch("BEGIN IMMEDIATE")
        .and_then(|()| apply_records(&conn, &batch))
        .map_err(|e| e.to_string())
        .and_then(|()| commit(&conn));
    let mut log = shared.log.lock();
    Failure::track(&mut log.apply_failing, &applied);
    if applied.is_err() {
        for r in batch.into_iter().rev() {
            log.queue.push_front(r);
        }
    }
    applied.map(|()| Some(last))
}

/// Applies queued records in batches, shortly after they arrive (a `call` may take them first),
/// and keeps the journal short. Ends when the store is dropped.
fn run(shared: &Shared) {
    // A failure that goes on (a full disk) is logged when it starts and when it ends, not per try.
    let mut failing = false;
    loop {
        let backlog = {
            let mut log = shared.log.lock();
            while log.queue.is_empty() && !shared.closed.load(Ordering::Relaxed) {
                log.writer_waiting = true;
                shared.queued.wait(&mut log);
            }
            log.writer_waiting = false;
            log.queue.len()
        };
        if shared.closed.load(Ordering::Relaxed) {
            return;
        }
        // Let a burst gather before committing: fewer, larger transactions (readers do not wait
        // for this thread, a `call` applies what is queued itself). A full batch goes at once.
        if backlog < MAX_BATCH {
            thread::sleep(GATHER);
        }
        match apply_queued(shared, MAX_BATCH) {
            Ok(applied) => {
                if std::mem::take(&mut failing) {
                    tracing::info!("session store: applying journal records works again");
                }
                if let Some(last) = applied {
                    compact(shared, last);
                }
            }
            Err(e) => {
                if !std::mem::replace(&mut failing, true) {
                    tracing::error!(error = %e, "session store: applying journal records failed; retrying (see `gateway status`)");
                }
                thread::sleep(std::time::Duration::from_millis(250));
            }
        }
    }
}

/// Keeps the journal short: empties it once everything in it is applied, or moves it aside while
/// records keep coming (deleted once the records it holds are applied).
fn compact(shared: &Shared, applied: u64) {
    let mut log = shared.log.lock();
    if log.rotated_upto.is_some_and(|upto| applied >= upto) {
        match std::fs::remove_file(&shared.rotated_path) {
            Ok(()) => log.rotated_upto = None,
            Err(e) => {
                tracing::warn!(error = %e, "session store: cannot delete the applied journal")
            }
        }
    }
    let all_applied = log.next_seq == applied + 1;
    let result = if all_applied && log.rotated_upto.is_none() && log.journal.len() > CLEAR_AT {
        log.journal.clear()
    } else if !all_applied && log.rotated_upto.is_none() && log.journal.len() > ROTATE_AT {
        let upto = log.next_seq - 1;
        log.journal.rotate(&shared.rotated_path).map(|()| {
            log.rotated_upto = Some(upto);
        })
    } else {
        Ok(())
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, "session store: cannot shorten the journal");
    }
}
