//! SQL classification: statement text → typed operations that policy can reason about.
//!
//! Every statement is parsed with PostgreSQL's own parser (libpg_query, through `pg_query`) and
//! summarised as a [`SqlStatement`]: its kind, the tables it reads and writes, whether its
//! UPDATE/DELETE parts are filtered, whether a SELECT is bounded, the functions it calls, the
//! settings it changes, what a COPY touches, and where each referenced column's value goes.
//! Nothing here decides anything; `policy` does. Text that does not parse, or that would read
//! differently under a lexing state the server could be switched to (see `readings`), becomes
//! one statement of kind [`StatementKind::Unparsed`] so that policy refuses it.

mod classify;
pub mod encoding;
mod normalize;
mod readings;
mod walk;

use parking_lot::Mutex;
use std::{borrow::Cow, collections::HashMap, sync::Arc};

use serde::Serialize;

pub use classify::classify;
pub use encoding::{ClientEncoding, EncodingError};
pub use readings::classify_all_readings;
pub use walk::{ColumnFlow, ColumnUse, RelationRef, SettingChange};

/// What a statement does, by its leading command (nested data-modifying parts are listed in
/// [`SqlStatement::nested_kinds`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StatementKind {
    Select,
    Insert,
    Update,
    Delete,
    Merge,
    Copy,
    Create,
    Alter,
    Drop,
    Truncate,
    Grant,
    Revoke,
    /// BEGIN, COMMIT, ROLLBACK, SAVEPOINT, RELEASE.
    Transaction,
    /// SET, RESET, DISCARD.
    Set,
    Show,
    Explain,
    Call,
    Prepare,
    Execute,
    Deallocate,
    /// DECLARE, FETCH, CLOSE, MOVE.
    Cursor,
    /// LISTEN, UNLISTEN, NOTIFY.
    Notify,
    Lock,
    /// VACUUM, ANALYZE.
    Maintenance,
    Comment,
    /// `DO` blocks: code the server runs that the gateway cannot see into.
    Do,
    Other,
    /// The text did not parse; policy refuses it unless the target allows unparseable SQL.
    Unparsed,
}

impl StatementKind {
    pub const ALL: &'static [StatementKind] = &[
        StatementKind::Select,
        StatementKind::Insert,
        StatementKind::Update,
        StatementKind::Delete,
        StatementKind::Merge,
        StatementKind::Copy,
        StatementKind::Create,
        StatementKind::Alter,
        StatementKind::Drop,
        StatementKind::Truncate,
        StatementKind::Grant,
        StatementKind::Revoke,
        StatementKind::Transaction,
        StatementKind::Set,
        StatementKind::Show,
        StatementKind::Explain,
        StatementKind::Call,
        StatementKind::Prepare,
        StatementKind::Execute,
        StatementKind::Deallocate,
        StatementKind::Cursor,
        StatementKind::Notify,
        StatementKind::Lock,
        StatementKind::Maintenance,
        StatementKind::Comment,
        StatementKind::Do,
        StatementKind::Other,
        StatementKind::Unparsed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StatementKind::Select => "select",
            StatementKind::Insert => "insert",
            StatementKind::Update => "update",
            StatementKind::Delete => "delete",
            StatementKind::Merge => "merge",
            StatementKind::Copy => "copy",
            StatementKind::Create => "create",
            StatementKind::Alter => "alter",
            StatementKind::Drop => "drop",
            StatementKind::Truncate => "truncate",
            StatementKind::Grant => "grant",
            StatementKind::Revoke => "revoke",
            StatementKind::Transaction => "transaction",
            StatementKind::Set => "set",
            StatementKind::Show => "show",
            StatementKind::Explain => "explain",
            StatementKind::Call => "call",
            StatementKind::Prepare => "prepare",
            StatementKind::Execute => "execute",
            StatementKind::Deallocate => "deallocate",
            StatementKind::Cursor => "cursor",
            StatementKind::Notify => "notify",
            StatementKind::Lock => "lock",
            StatementKind::Maintenance => "maintenance",
            StatementKind::Comment => "comment",
            StatementKind::Do => "do",
            StatementKind::Other => "other",
            StatementKind::Unparsed => "unparsed",
        }
    }

    pub fn parse(s: &str) -> Option<StatementKind> {
        Self::ALL.iter().copied().find(|k| k.as_str() == s)
    }

    /// Statements that change data (used for "writes without WHERE").
    pub fn filters_rows(self) -> bool {
        matches!(self, StatementKind::Update | StatementKind::Delete)
    }
}

impl std::fmt::Display for StatementKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CopyDirection {
    /// `COPY … FROM`: data flows into a table.
    From,
    /// `COPY … TO`: data flows out of a table or query.
    To,
}

/// Where COPY data comes from or goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CopyEndpoint {
    /// STDIN / STDOUT: through this connection (and so through the gateway).
    Client,
    /// A file on the database server.
    File,
    /// A shell command on the database server.
    Program,
}

impl CopyEndpoint {
    pub fn as_str(self) -> &'static str {
        match self {
            CopyEndpoint::Client => "client",
            CopyEndpoint::File => "file",
            CopyEndpoint::Program => "program",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CopyFormat {
    Text,
    Csv,
    Binary,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CopySpec {
    pub direction: CopyDirection,
    pub endpoint: CopyEndpoint,
    pub format: CopyFormat,
    /// Field delimiter of text/CSV data; `None` when not a single byte (the server refuses it).
    pub delimiter: Option<u8>,
    /// CSV quote and escape characters.
    pub quote: Option<u8>,
    pub escape: Option<u8>,
    /// The first line holds column names.
    pub header: bool,
    /// `ENCODING` of the data, when given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encoding: Option<String>,
    /// Options the gateway does not know (masking refuses such COPYs rather than guess).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unknown_options: Vec<String>,
    /// The column list as written; empty means every column of the table (or a query's columns).
    pub columns: Vec<String>,
    /// The table (`schema.table` or `table`); `None` for `COPY (query)`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
}

/// A prepared statement or cursor that a statement creates, runs or removes (SQL-level PREPARE,
/// EXECUTE, DEALLOCATE, DECLARE, FETCH/MOVE, CLOSE): they share the server's namespaces with the
/// protocol's own, so the gateway follows them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum SqlObject {
    Prepare {
        name: String,
    },
    Execute {
        name: String,
    },
    /// `None`: DEALLOCATE ALL.
    Deallocate {
        name: Option<String>,
    },
    Declare {
        name: String,
        hold: bool,
    },
    Fetch {
        name: String,
        moves: bool,
    },
    /// `None`: CLOSE ALL.
    Close {
        name: Option<String>,
    },
    /// DISCARD ALL: every prepared statement and portal goes.
    DiscardAll,
}

/// One statement, as policy sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SqlStatement {
    pub kind: StatementKind,
    /// Kinds of statements nested inside this one that run with it: data-modifying CTEs,
    /// `EXPLAIN ANALYZE x`, `PREPARE p AS x`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nested_kinds: Vec<StatementKind>,
    /// Tables (and views) read, as written (`schema.table` or `table`), unquoted names lowercased.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tables_read: Vec<String>,
    /// Tables created, altered, dropped, truncated or whose rows change.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tables_written: Vec<String>,
    /// For statements with UPDATE/DELETE parts: every one of them has a WHERE that refers to a
    /// column (`WHERE true` and `WHERE 1 = 1` do not count). `None` for other statements.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub has_where: Option<bool>,
    /// For queries: LIMIT/FETCH, an equality predicate on a column, or a lone aggregate.
    /// `None` for other statements.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bounded: Option<bool>,
    /// Functions called anywhere in the statement (including table functions), lowercased,
    /// schema-qualified when written so.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub functions: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub copy: Option<CopySpec>,
    /// Settings changed (SET, RESET, `set_config()`, `ALTER ROLE … SET`, …), anywhere in it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub settings: Vec<SettingChange>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<SqlObject>,
    /// Why the text did not parse (kind `unparsed`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The relations named, with aliases (for masking: whole-row references, covered tables).
    #[serde(skip)]
    pub relations: Vec<RelationRef>,
    /// Every column reference and where its value goes (for masking).
    #[serde(skip)]
    pub columns: Vec<ColumnUse>,
}

impl SqlStatement {
    pub fn new(kind: StatementKind) -> Self {
        SqlStatement {
            kind,
            nested_kinds: Vec::new(),
            tables_read: Vec::new(),
            tables_written: Vec::new(),
            has_where: None,
            bounded: None,
            functions: Vec::new(),
            copy: None,
            settings: Vec::new(),
            object: None,
            error: None,
            relations: Vec::new(),
            columns: Vec::new(),
        }
    }

    pub fn unparsed(error: impl Into<String>) -> Self {
        SqlStatement {
            error: Some(error.into()),
            ..SqlStatement::new(StatementKind::Unparsed)
        }
    }

    /// The statement's own kind and every nested kind.
    pub fn kinds(&self) -> impl Iterator<Item = StatementKind> + '_ {
        std::iter::once(self.kind).chain(self.nested_kinds.iter().copied())
    }

    pub fn tables(&self) -> impl Iterator<Item = &str> {
        self.tables_read
            .iter()
            .chain(self.tables_written.iter())
            .map(String::as_str)
    }
}

/// The statements of one piece of SQL text (a simple Query may hold several; an empty string or
/// a lone comment holds none).
pub type Statements = Arc<Vec<SqlStatement>>;

/// Most texts the cache keeps; extended-protocol clients send the same few texts over and over.
const CACHE_CAPACITY: usize = 4096;
/// Longer texts are classified every time rather than kept.
const CACHE_MAX_TEXT: usize = 4096;
/// Texts up to this size are parsed on the session's own task (microseconds); longer ones on a
/// blocking thread, a bounded number at a time.
const INLINE_MAX_TEXT: usize = 8 * 1024;

/// How much SQL one statement text may hold, per target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longer texts are refused unparsed.
    pub max_bytes: usize,
    /// Texts with more tokens are refused before parsing (a parse tree costs ~700 bytes a token).
    pub max_tokens: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 1024 * 1024,
            max_tokens: 50_000,
        }
    }
}

/// A statement text as the gateway read it.
#[derive(Debug, Clone)]
pub struct Classified {
    /// The text decoded from the client encoding (lossy when it was not valid, and then refused).
    pub text: Arc<str>,
    pub statements: Statements,
}

/// Classification shared by every session of the daemon: results by text (numeric literals'
/// values left out where no result depends on them: see [`Entries`]), and a bound on how many
/// long texts are parsed at once, so that memory stays bounded whatever jobs send. Policy is still decided per statement.
#[derive(Debug)]
pub struct Classifier {
    entries: Mutex<Entries>,
    parses: Arc<tokio::sync::Semaphore>,
}

impl Default for Classifier {
    fn default() -> Self {
        Classifier::new(2)
    }
}

/// Cached results. Exact texts and literal-free forms are kept apart: `SET x = 0` as sent and
/// the literal-free form of `SET x = 1` are the same string, and must not find each other.
#[derive(Debug, Default)]
struct Entries {
    /// By the text as sent (with its encoding's name in front when not UTF-8).
    exact: HashMap<Box<str>, Statements>,
    /// By the text with its numbers' values left out (see `normalize`): only results that no
    /// number's value can change.
    literal_free: HashMap<Box<str>, Statements>,
}

/// A text as the cache knows it (see [`Entries`]).
fn cache_key(text: &str, encoding: ClientEncoding) -> Cow<'_, str> {
    match encoding {
        ClientEncoding::Utf8 | ClientEncoding::SqlAscii => Cow::Borrowed(text),
        other => Cow::Owned(format!("{}\0{text}", other.name())),
    }
}

/// Whether no number's value in the text can have changed this classification: plain queries
/// and row changes only. Settings (`SET standard_conforming_strings = 1` against `= 0`), COPY
/// options, named objects and parse errors (which may quote the text) carry literal values, so
/// they are kept under their exact text.
fn literal_values_unused(statements: &[SqlStatement]) -> bool {
    let plain = |k: StatementKind| {
        matches!(
            k,
            StatementKind::Select
                | StatementKind::Insert
                | StatementKind::Update
                | StatementKind::Delete
        )
    };
    statements.iter().all(|s| {
        s.kinds().all(plain)
            && s.settings.is_empty()
            && s.copy.is_none()
            && s.object.is_none()
            && s.error.is_none()
    })
}

impl Classifier {
    /// `parallel`: long texts parsed at the same time (each may take tens of MB).
    pub fn new(parallel: usize) -> Self {
        Classifier {
            entries: Mutex::new(Entries::default()),
            parses: Arc::new(tokio::sync::Semaphore::new(parallel.max(1))),
        }
    }

    /// Reads `raw` (a Query's or Parse's text as sent) in the session's `encoding` and classifies it.
    pub async fn classify(
        &self,
        raw: &[u8],
        encoding: ClientEncoding,
        limits: Limits,
    ) -> Classified {
        let refused = |text: Arc<str>, why: String| Classified {
            text,
            statements: Arc::new(vec![SqlStatement::unparsed(why)]),
        };
        let lossy = || Arc::<str>::from(String::from_utf8_lossy(raw).as_ref());
        if raw.len() > limits.max_bytes {
            return refused(
                lossy(),
                format!(
                    "the statement is {} bytes; the gateway classifies at most {} ([targets.postgres] max_statement_bytes)",
                    raw.len(),
                    limits.max_bytes
                ),
            );
        }
        let Some(text) = encoding.decode(raw) else {
            return refused(
                lossy(),
                format!("the statement is not valid {} text", encoding.name()),
            );
        };
        let text: Arc<str> = Arc::from(text.as_ref());
        // Texts no longer than the token limit cannot exceed it: those may share results.
        let cacheable = raw.len() <= CACHE_MAX_TEXT.min(limits.max_tokens);
        let keys = cacheable.then(|| {
            let literal_free =
                normalize::literal_free_key(&text).map(|k| cache_key(&k, encoding).into_owned());
            (cache_key(&text, encoding), literal_free)
        });
        if let Some((exact, literal_free)) = &keys {
            let entries = self.lock();
            let hit = entries.exact.get(exact.as_ref()).or_else(|| {
                literal_free
                    .as_deref()
                    .and_then(|k| entries.literal_free.get(k))
            });
            if let Some(hit) = hit {
                return Classified {
                    text,
                    statements: hit.clone(),
                };
            }
        }
        let statements = if raw.len() <= INLINE_MAX_TEXT {
            Arc::new(classify_all_readings(&text, raw, limits.max_tokens))
        } else {
            self.classify_blocking(text.clone(), raw.to_vec(), limits.max_tokens)
                .await
        };
        if let Some((exact, literal_free)) = keys {
            let mut entries = self.lock();
            // Crude but bounded: when full, start over (hot texts come back on their next use).
            if entries.exact.len() + entries.literal_free.len() >= CACHE_CAPACITY {
                entries.exact.clear();
                entries.literal_free.clear();
            }
            match literal_free {
                Some(k) if literal_values_unused(&statements) => {
                    entries.literal_free.insert(k.into(), statements.clone())
                }
                _ => entries.exact.insert(exact.into(), statements.clone()),
            };
        }
        Classified { text, statements }
    }

    async fn classify_blocking(
        &self,
        text: Arc<str>,
        raw: Vec<u8>,
        max_tokens: usize,
    ) -> Statements {
        let Ok(permit) = self.parses.clone().acquire_owned().await else {
            return Arc::new(vec![SqlStatement::unparsed("the gateway is shutting down")]);
        };
        // The permit goes with the work: a session that leaves mid-parse does not free a slot
        // while its parse still runs.
        let task = tokio::task::spawn_blocking(move || {
            let statements = classify_all_readings(&text, &raw, max_tokens);
            drop(permit);
            statements
        });
        match task.await {
            Ok(v) => Arc::new(v),
            Err(e) => Arc::new(vec![SqlStatement::unparsed(format!(
                "the statement could not be classified: {e}"
            ))]),
        }
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, Entries> {
        self.entries.lock()
    }
}

#[cfg(test)]
mod tests;
