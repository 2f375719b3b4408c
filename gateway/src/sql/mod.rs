//! SQL classification: statement text → typed operations that policy can reason about.
//!
//! Every statement is parsed with sqlparser's PostgreSQL dialect and summarised as a
//! [`SqlStatement`]: its kind, the tables it reads and writes, whether its UPDATE/DELETE parts are
//! filtered, whether a SELECT is bounded, the functions it calls and what a COPY touches. Nothing
//! here decides anything; `policy` does. Text that does not parse becomes one statement of kind
//! [`StatementKind::Unparsed`] so that policy can refuse it.

mod classify;
mod names;
mod normalize;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use serde::Serialize;

pub use classify::classify;

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
    /// Field delimiter of text/CSV data.
    pub delimiter: char,
    /// The column list as written; empty means every column of the table (or a query's columns).
    pub columns: Vec<String>,
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
    /// Why the text did not parse (kind `unparsed`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
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
            error: None,
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

/// Classification results by text (numeric literals' values left out: see `normalize`), shared
/// by every session of the daemon. Policy is still decided per statement on the result.
#[derive(Debug, Default)]
pub struct ClassifierCache {
    entries: Mutex<HashMap<Box<str>, Statements>>,
}

impl ClassifierCache {
    pub fn classify(&self, sql: &str) -> Statements {
        if sql.len() > CACHE_MAX_TEXT {
            return Arc::new(classify(sql));
        }
        let normalized = normalize::literal_free_key(sql);
        let key = normalized.as_deref().unwrap_or(sql);
        if let Some(hit) = self.lock().get(key) {
            return hit.clone();
        }
        let result = Arc::new(classify(sql));
        // An unparsed result's error message quotes the text: keep it under its exact text only.
        if normalized.is_some() && result.iter().any(|s| s.error.is_some()) {
            return result;
        }
        let mut entries = self.lock();
        // Crude but bounded: when full, start over (hot texts come back on their next use).
        if entries.len() >= CACHE_CAPACITY {
            entries.clear();
        }
        entries.insert(key.into(), result.clone());
        result
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, Statements>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests;
