//! The session store: one SQLite database (WAL) owned by one thread.
//!
//! Callers hand the thread closures; it runs everything that is queued inside one transaction, commits,
//! and only then answers each caller (group commit). An answer therefore means "durably stored": a
//! `kill -9` of the daemon after it loses nothing a caller was told was written.

use std::{
    path::{Path, PathBuf},
    sync::mpsc,
    thread,
};

use rusqlite::Connection;
use tokio::sync::oneshot;

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
/// A closure to run on the store thread: whether it succeeded, and how to answer its caller.
type Work = Box<dyn FnOnce(&Connection) -> (bool, Reply) + Send>;

#[derive(Clone)]
pub struct Store {
    tx: mpsc::Sender<Work>,
    path: PathBuf,
}

impl Store {
    /// Opens (creating if needed) `<state_dir>/gateway.db` and starts the store thread.
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
        let (tx, rx) = mpsc::channel::<Work>();
        thread::Builder::new()
            .name("session-store".into())
            .spawn(move || run(conn, rx))
            .expect("spawn session store thread");
        Ok(Store { tx, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the store thread; resolves once its transaction is committed.
    pub async fn call<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply_tx, reply_rx) = oneshot::channel();
        self.submit(f, move |r| {
            let _ = reply_tx.send(r);
        })?;
        reply_rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Like [`Store::call`] for threads outside the async runtime.
    pub fn call_blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply_tx, reply_rx) = mpsc::sync_channel(1);
        self.submit(f, move |r| {
            let _ = reply_tx.send(r);
        })?;
        reply_rx.recv().map_err(|_| StoreError::Closed)?
    }

    /// Queues `f` without waiting for it (counters, end-of-session updates); errors are logged.
    pub fn spawn<F>(&self, what: &'static str, f: F)
    where
        F: FnOnce(&Connection) -> Result<(), StoreError> + Send + 'static,
    {
        let queued = self.submit(f, move |r: Result<(), StoreError>| {
            if let Err(e) = r {
                tracing::error!(error = %e, "session store: {what} failed");
            }
        });
        if let Err(e) = queued {
            tracing::error!(error = %e, "session store: {what} not recorded");
        }
    }

    fn submit<T, F, D>(&self, f: F, deliver: D) -> Result<(), StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
        D: FnOnce(Result<T, StoreError>) + Send + 'static,
    {
        let work: Work = Box::new(move |conn| {
            let result = f(conn);
            let ok = result.is_ok();
            let reply: Reply = Box::new(move |commit: Result<(), String>| match (result, commit) {
                (Ok(v), Ok(())) => deliver(Ok(v)),
                (Err(e), _) => deliver(Err(e)),
                (Ok(_), Err(e)) => deliver(Err(StoreError::Commit(e))),
            });
            (ok, reply)
        });
        self.tx.send(work).map_err(|_| StoreError::Closed)
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

/// Most closures one transaction takes; bounds the latency a long queue adds to the first caller.
const MAX_BATCH: usize = 256;

fn run(conn: Connection, rx: mpsc::Receiver<Work>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        let began = conn.execute_batch("BEGIN IMMEDIATE");
        let replies: Vec<Reply> = batch.into_iter().map(|w| isolated(&conn, w)).collect();
        let commit = began
            .and_then(|()| conn.execute_batch("COMMIT"))
            .map_err(|e| {
                let _ = conn.execute_batch("ROLLBACK");
                e.to_string()
            });
        if let Err(e) = &commit {
            tracing::error!(error = %e, "session store transaction failed");
        }
        for reply in replies {
            reply(commit.clone());
        }
    }
}
