//! What the two directions of a session share: the queue of client requests whose responses are
//! still due (in order: PostgreSQL answers in order), and prepared statements and portals with
//! the result descriptions learnt for them.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::Instant,
};

use pgwire::messages::data::FieldDescription;

use crate::{mask::ResultColumn, sql::Statements};

/// Why the gateway refused a statement (sent to the client as an ErrorResponse).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub rule: Option<String>,
    pub message: String,
    /// Shown as the error's DETAIL (which statement of a multi-statement query).
    pub detail: Option<String>,
}

pub type Columns = Arc<Vec<FieldDescription>>;

/// A prepared statement (named, or the unnamed one) as the client defined it.
#[derive(Debug)]
pub struct Stmt {
    pub sql: Arc<str>,
    pub statements: Statements,
    pub refusal: Option<Refusal>,
    /// The rule that allowed it.
    pub rule: Option<String>,
    /// A Describe of the statement was forwarded (so its columns will be known).
    pub described: Mutex<bool>,
    /// Result columns from the server's answer to Describe (format codes not yet chosen).
    pub columns: Mutex<Option<Columns>>,
}

/// A portal: a statement bound to parameters and result formats.
#[derive(Debug)]
pub struct Portal {
    pub stmt: Arc<Stmt>,
    pub result_formats: Vec<i16>,
    /// Parameters as recorded (text, or hex of binary values; capped).
    pub params: Vec<serde_json::Value>,
    pub described: Mutex<bool>,
    pub columns: Mutex<Option<Columns>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Stmt {
    pub fn new(
        sql: Arc<str>,
        statements: Statements,
        refusal: Option<Refusal>,
        rule: Option<String>,
    ) -> Self {
        Stmt {
            sql,
            statements,
            refusal,
            rule,
            described: Mutex::new(false),
            columns: Mutex::new(None),
        }
    }

    pub fn is_described(&self) -> bool {
        *lock(&self.described)
    }

    pub fn mark_described(&self) {
        *lock(&self.described) = true;
    }

    pub fn set_columns(&self, c: Columns) {
        *lock(&self.columns) = Some(c);
    }
}

impl Portal {
    pub fn is_described(&self) -> bool {
        *lock(&self.described) || self.stmt.is_described()
    }

    pub fn mark_described(&self) {
        *lock(&self.described) = true;
    }

    pub fn set_columns(&self, c: Columns) {
        *lock(&self.columns) = Some(c);
    }

    /// The result columns of this portal with their final formats, if known.
    pub fn result_columns(&self) -> Option<Vec<ResultColumn>> {
        if let Some(c) = lock(&self.columns).as_ref() {
            return Some(result_columns(c, None));
        }
        let c = lock(&self.stmt.columns).clone()?;
        Some(result_columns(&c, Some(&self.result_formats)))
    }
}

/// Columns of a RowDescription; `formats` overrides the format codes (Bind's result formats: none
/// = all text, one = for all, else one per column).
pub fn result_columns(fields: &[FieldDescription], formats: Option<&[i16]>) -> Vec<ResultColumn> {
    fields
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let format = match formats {
                None => f.format_code,
                Some([]) => 0,
                Some([one]) => *one,
                Some(many) => many.get(i).copied().unwrap_or(0),
            };
            ResultColumn {
                name: f.name.clone(),
                table_oid: f.table_id as u32,
                column: f.column_id,
                type_oid: f.type_id,
                binary: format == 1,
            }
        })
        .collect()
}

/// One statement execution being answered: a simple Query (all its statements) or an Execute.
#[derive(Debug)]
pub struct Exec {
    pub seq: u64,
    pub started: Instant,
    /// The client's query was replaced by one that fails; its error is replaced with this one.
    pub refusal: Option<Refusal>,
    pub portal: Option<Arc<Portal>>,
    pub statements: Statements,
    pub rows: u64,
    pub masked: u64,
    pub tags: Vec<String>,
    pub error: Option<(String, String)>,
    pub suspended: bool,
    /// Columns and masked rows kept for the recording.
    pub sample_columns: Vec<String>,
    pub sample: Vec<Vec<serde_json::Value>>,
    pub sample_dropped: bool,
}

impl Exec {
    pub fn new(seq: u64, statements: Statements) -> Self {
        Exec {
            seq,
            started: Instant::now(),
            refusal: None,
            portal: None,
            statements,
            rows: 0,
            masked: 0,
            tags: Vec::new(),
            error: None,
            suspended: false,
            sample_columns: Vec::new(),
            sample: Vec::new(),
            sample_dropped: false,
        }
    }
}

#[derive(Debug)]
pub enum Described {
    Statement(Arc<Stmt>),
    Portal(Arc<Portal>),
}

/// A client message whose answer has not fully arrived yet.
#[derive(Debug)]
pub enum Pending {
    /// A simple Query (or a refused message turned into one): answered up to ReadyForQuery.
    Query(Box<Exec>),
    Parse {
        refusal: Option<Refusal>,
    },
    Bind,
    /// `swallow`: injected by the gateway to learn a portal's columns; the client never asked.
    Describe {
        target: Described,
        swallow: bool,
    },
    Execute(Box<Exec>),
    Close,
    Sync,
}

impl Pending {
    /// Messages of the extended protocol: an error in one of them makes the server skip every
    /// message up to the next Sync.
    pub fn is_extended(&self) -> bool {
        matches!(
            self,
            Pending::Parse { .. }
                | Pending::Bind
                | Pending::Describe { .. }
                | Pending::Execute(_)
                | Pending::Close
        )
    }
}

#[derive(Debug, Default)]
pub struct Tracker {
    pub pending: VecDeque<Pending>,
    /// The server is discarding messages until the next Sync (after an extended-protocol error).
    pub skipping: bool,
    /// Transaction status of the last ReadyForQuery.
    pub status: u8,
}

pub type Shared = Mutex<Tracker>;

pub fn with<R>(shared: &Shared, f: impl FnOnce(&mut Tracker) -> R) -> R {
    f(&mut lock(shared))
}
