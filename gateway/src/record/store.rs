//! The session store: one SQLite database (WAL) with one writer connection.
//!
//! Write-ahead records (`call`) are committed on the caller's thread before it goes on: an answer
//! means "durably stored", so a `kill -9` of the daemon loses nothing a caller was told was written.
//! Records nobody waits for (`spawn`) are queued and committed in batches by a background thread, or
//! earlier, in order, by the next `call`.

use std::{
    collections::VecDeque,
    path::{Path, PathBuf},
    sync::{Arc, Condvar, Mutex},
    thread,
};

use rusqlite::Connection;

use super::schema;

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

/// Sends the outcome of one closure once the transaction it ran in is settled.
type Reply = Box<dyn FnOnce(Result<(), String>) + Send>;
/// A queued closure: whether it succeeded, and how to answer its caller.
type Work = Box<dyn FnOnce(&Connection) -> (bool, Reply) + Send>;

/// The writer connection, and work queued for it that nobody waits for.
struct Shared {
    conn: Mutex<Connection>,
    queue: Mutex<VecDeque<Work>>,
    queued: Condvar,
}

#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
    path: PathBuf,
}

impl Store {
    /// Opens (creating if needed) `<state_dir>/gateway.db` and starts the background writer.
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(state_dir).map_err(|source| StoreError::StateDir {
            path: state_dir.display().to_string(),
            source,
        })?;
        restrict_permissions(state_dir);
        let path = state_dir.join("gateway.db");
        let conn = open_connection(&path)?;
        // Checkpoints (which fsync) run on a connection of their own, off the writer's path.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        let checkpointer = open_connection(&path)?;
        thread::Builder::new()
            .name("session-store-checkpoint".into())
            .spawn(move || checkpoint_loop(checkpointer))
            .expect("spawn checkpoint thread");
        let shared = Arc::new(Shared {
            conn: Mutex::new(conn),
            queue: Mutex::new(VecDeque::new()),
            queued: Condvar::new(),
        });
        let background = shared.clone();
        thread::Builder::new()
            .name("session-store".into())
            .spawn(move || run(&background))
            .expect("spawn session store thread");
        Ok(Store { shared, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` in a transaction of its own and returns once it is committed (durable against a
    /// crash of the process: WAL, synchronous=NORMAL). It runs on the calling thread: a commit
    /// without fsync costs microseconds, far less than handing the work to another thread and
    /// back. Work queued earlier with [`Store::spawn`] is committed first, in the same transaction,
    /// so the store keeps the order in which things happened.
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
        let conn = self.shared.conn.lock().unwrap_or_else(|p| p.into_inner());
        let earlier: Vec<Work> = self
            .shared
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect();
        conn.execute_batch("BEGIN IMMEDIATE")?;
        let replies: Vec<Reply> = earlier.into_iter().map(|w| isolated(&conn, w)).collect();
        let savepoint = conn.execute_batch("SAVEPOINT work").is_ok();
        let result = f(&conn);
        if savepoint {
            if result.is_err() {
                let _ = conn.execute_batch("ROLLBACK TO work");
            }
            let _ = conn.execute_batch("RELEASE work");
        }
        let commit = commit(&conn);
        drop(conn);
        for reply in replies {
            reply(commit.clone());
        }
        match (result, commit) {
            (Ok(v), Ok(())) => Ok(v),
            (Err(e), _) => Err(e),
            (Ok(_), Err(e)) => Err(StoreError::Commit(e)),
        }
    }

    /// Queues `f` without waiting for it (counters, end-of-session updates); errors are logged.
    pub fn spawn<F>(&self, what: &'static str, f: F)
    where
        F: FnOnce(&Connection) -> Result<(), StoreError> + Send + 'static,
    {
        let work: Work = Box::new(move |conn| {
            let result = f(conn);
            let ok = result.is_ok();
            let reply: Reply = Box::new(move |commit: Result<(), String>| {
                let failed = result.err().map(|e| e.to_string()).or(commit.err());
                if let Some(e) = failed {
                    tracing::error!(error = %e, "session store: {what} failed");
                }
            });
            (ok, reply)
        });
        self.shared
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(work);
        self.shared.queued.notify_one();
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

/// Copies the WAL into the database every half second without blocking the writer. Ends when the
/// process does.
fn checkpoint_loop(conn: Connection) {
    loop {
        thread::sleep(std::time::Duration::from_millis(500));
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "session store checkpoint failed");
        }
    }
}

/// Runs one closure inside a savepoint, so that a closure that fails halfway leaves nothing behind
/// while the rest of the batch commits.
fn isolated(conn: &Connection, work: Work) -> Reply {
    let savepoint = conn.execute_batch("SAVEPOINT work").is_ok();
    let (ok, reply) = work(conn);
    if savepoint {
        if !ok {
            let _ = conn.execute_batch("ROLLBACK TO work");
        }
        let _ = conn.execute_batch("RELEASE work");
    }
    reply
}

fn commit(conn: &Connection) -> Result<(), String> {
    conn.execute_batch("COMMIT").map_err(|e| {
        let _ = conn.execute_batch("ROLLBACK");
        tracing::error!(error = %e, "session store transaction failed");
        e.to_string()
    })
}

/// Most queued closures one background transaction takes.
const MAX_BATCH: usize = 256;

/// Commits queued work in batches, shortly after it arrives (callers of `call` may take it first).
fn run(shared: &Shared) {
    loop {
        let batch: Vec<Work> = {
            let mut queue = shared.queue.lock().unwrap_or_else(|p| p.into_inner());
            while queue.is_empty() {
                queue = shared.queued.wait(queue).unwrap_or_else(|p| p.into_inner());
            }
            // Let a burst gather (and a waiting `call` take it along) before committing.
            drop(queue);
            thread::sleep(std::time::Duration::from_millis(2));
            let mut queue = shared.queue.lock().unwrap_or_else(|p| p.into_inner());
            let n = queue.len().min(MAX_BATCH);
            queue.drain(..n).collect()
        };
        if batch.is_empty() {
            continue;
        }
        let conn = shared.conn.lock().unwrap_or_else(|p| p.into_inner());
        let began = conn.execute_batch("BEGIN IMMEDIATE");
        let replies: Vec<Reply> = batch.into_iter().map(|w| isolated(&conn, w)).collect();
        let commit = began
            .map_err(|e| e.to_string())
            .and_then(|()| commit(&conn));
        drop(conn);
        for reply in replies {
            reply(commit.clone());
        }
    }
}
