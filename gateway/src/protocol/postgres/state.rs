//! What the two directions of a session share: the queue of client requests whose answers are
//! still due (PostgreSQL answers in order), and the prepared statements and portals as the server
//! has them.
//!
//! The maps mirror the server exactly, so that an Execute is judged, masked, recorded and shown
//! to approvers as the statement the server will really run:
//! - The frontend applies each Parse, Bind and Close as it forwards it, with the server's rules
//!   (a named statement or portal is never replaced: a Parse or Bind of an existing name fails;
//!   the unnamed ones are dropped first). The backend undoes those changes when the server reports
//!   the message failed, or skipped it (after an error, everything up to Sync).
//! - Changes made by SQL (PREPARE, DEALLOCATE, DECLARE, CLOSE, DISCARD) are applied only when
//!   the server confirms them, and portals go away at the end of their transaction.
//! - A name whose state depends on an earlier batch (up to a Sync, or a simple Query) that the
//!   server has not answered yet, and where a failure would leave a *different* object in place
//!   (not just none), is looked up only once that batch is answered: the frontend waits.

use parking_lot::Mutex;
use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::Instant,
};

use pgwire::messages::data::FieldDescription;

use crate::{
    mask::ResultColumn,
    policy::Decision,
    sql::{SqlObject, Statements},
};

/// Why the gateway refused a statement (sent to the client as an ErrorResponse).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub rule: Option<String>,
    /// SQLSTATE: 42501 for policy, 0A000 for what the gateway cannot account for.
    pub code: &'static str,
    pub message: String,
    /// Shown as the error's DETAIL (which statement of a multi-statement query).
    pub detail: Option<String>,
}

pub(super) type Columns = Arc<Vec<FieldDescription>>;

/// A prepared statement (named, or the unnamed one) as the server has it.
#[derive(Debug)]
pub struct Stmt {
    pub sql: Arc<str>,
    pub statements: Statements,
    /// The decision at Parse (allow, or approval still to ask at each execution).
    pub decision: Option<Decision>,
    /// Prepared by SQL (`PREPARE`), not by a Parse message.
    pub sql_level: bool,
    /// Result columns from the server's answer to a Describe of it (formats not yet chosen).
    pub columns: Mutex<Option<Columns>>,
    /// A Describe of it was forwarded.
    pub described: Mutex<bool>,
}

/// A portal: a statement bound to parameters, or a cursor declared in SQL.
#[derive(Debug)]
pub struct Portal {
    pub stmt: Arc<Stmt>,
    pub result_formats: Vec<i16>,
    /// Parameters as recorded (text, or hex of binary values; capped).
    pub params: Vec<serde_json::Value>,
    /// `DECLARE … WITH HOLD`: survives the end of its transaction.
    pub holdable: bool,
    pub described: Mutex<bool>,
    pub columns: Mutex<Option<Columns>>,
}

impl Stmt {
    pub fn new(
        sql: Arc<str>,
        statements: Statements,
        decision: Option<Decision>,
        sql_level: bool,
    ) -> Self {
        Stmt {
            sql,
            statements,
            decision,
            sql_level,
            described: Mutex::new(false),
            columns: Mutex::new(None),
        }
    }

    pub fn is_described(&self) -> bool {
        *self.described.lock()
    }

    pub fn mark_described(&self) {
        *self.described.lock() = true;
    }

    pub fn set_columns(&self, c: Columns) {
        *self.columns.lock() = Some(c);
    }
}

impl Portal {
    pub fn new(stmt: Arc<Stmt>, result_formats: Vec<i16>, params: Vec<serde_json::Value>) -> Self {
        Portal {
            stmt,
            result_formats,
            params,
            holdable: false,
            described: Mutex::new(false),
            columns: Mutex::new(None),
        }
    }

    pub fn is_described(&self) -> bool {
        *self.described.lock() || self.stmt.is_described()
    }

    pub fn mark_described(&self) {
        *self.described.lock() = true;
    }

    pub fn set_columns(&self, c: Columns) {
        *self.columns.lock() = Some(c);
    }

    /// The result columns of this portal with their final formats, if known.
    pub fn result_columns(&self) -> Option<Vec<ResultColumn>> {
        if let Some(c) = self.columns.lock().as_ref() {
            return Some(result_columns(c, None));
        }
        let c = self.stmt.columns.lock().clone()?;
        Some(result_columns(&c, Some(&self.result_formats)))
    }
}

/// Columns of a RowDescription; `formats` overrides the format codes (Bind's result formats: none
/// = all text, one = for all, else one per column).
pub(super) fn result_columns(
    fields: &[FieldDescription],
    formats: Option<&[i16]>,
) -> Vec<ResultColumn> {
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
    /// The statements read tables that column masking covers: error and notice texts are
    /// withheld (they can quote values).
    pub reads_covered: bool,
    /// Per statement: the prepared statement or cursor it creates (entered into the maps when
    /// the server confirms it).
    pub made: Vec<Option<Made>>,
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
            reads_covered: false,
            made: Vec::new(),
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
pub(super) enum Described {
    Statement(Arc<Stmt>),
    Portal(Arc<Portal>),
}

/// A client message whose answer has not fully arrived yet.
#[derive(Debug)]
pub(super) enum Pending {
    /// A simple Query (or a refused message turned into one): answered up to ReadyForQuery.
    Query(Box<Exec>),
    /// `refusal`: the gateway sent a Parse that fails in its place.
    Parse {
        refusal: Option<Refusal>,
        msg: u64,
    },
    Bind {
        msg: u64,
    },
    /// `swallow`: injected by the gateway to learn a portal's columns; the client never asked.
    Describe {
        target: Described,
        swallow: bool,
    },
    Execute(Box<Exec>),
    Close,
    Sync,
    /// A message the gateway refused: it sent one in its place that fails without side effects.
    Refused(Refusal),
}

impl Pending {
    /// Messages of the extended protocol: an error in one of them makes the server skip every
    /// message up to the next Sync.
    pub(super) fn is_extended(&self) -> bool {
        !matches!(self, Pending::Query(_) | Pending::Sync)
    }

    /// The frontend's number of the message (for undoing its map changes).
    fn msg(&self) -> Option<u64> {
        match self {
            Pending::Parse { msg, .. } | Pending::Bind { msg } => Some(*msg),
            _ => None,
        }
    }
}

/// A name's entry: its value as the server will have it, and how settled that is.
#[derive(Debug)]
struct Entry<T> {
    value: Option<Arc<T>>,
    /// Last batch that changed it (or will change it: SQL effects still to confirm).
    batch: u64,
    /// A failure in an unanswered batch could leave another object under this name than `value`
    /// (not just none): lookups from later batches wait.
    ambiguous: bool,
}

/// How a lookup came out.
#[derive(Debug)]
pub(super) enum Lookup<T> {
    Found(Arc<T>),
    Absent,
    /// Depends on the answer to batch `n`: wait for it, then look again.
    WaitFor(u64),
}

/// An undoable change: the name, and its entry before.
#[derive(Debug)]
enum Undo {
    Statement(String, Option<Entry<Stmt>>),
    Portal(String, Option<Entry<Portal>>),
}

#[derive(Debug)]
struct Namespace<T> {
    entries: HashMap<String, Entry<T>>,
    /// An unconfirmed SQL `… ALL` (DEALLOCATE ALL, CLOSE ALL, DISCARD ALL) in this batch.
    all_until: Option<u64>,
}

impl<T> Default for Namespace<T> {
    fn default() -> Self {
        Namespace {
            entries: HashMap::new(),
            all_until: None,
        }
    }
}

impl<T> Namespace<T> {
    fn lookup(&self, name: &str, current: u64, answered: u64) -> Lookup<T> {
        if let Some(b) = self.all_until.filter(|b| *b < current && *b >= answered) {
            return Lookup::WaitFor(b);
        }
        match self.entries.get(name) {
            Some(e) if e.ambiguous && e.batch < current && e.batch >= answered => {
                Lookup::WaitFor(e.batch)
            }
            Some(Entry { value: Some(v), .. }) => Lookup::Found(v.clone()),
            _ => Lookup::Absent,
        }
    }

    fn present(&self, name: &str) -> bool {
        self.entries.get(name).is_some_and(|e| e.value.is_some())
    }

    /// Whether changing `name` now must wait: its state still depends on an unanswered earlier
    /// batch, so the server's answer to the change cannot be predicted.
    fn change_waits(&self, name: &str, current: u64, answered: u64) -> Option<u64> {
        let unanswered = |b: u64| b < current && b >= answered;
        if let Some(b) = self.all_until.filter(|b| unanswered(*b)) {
            return Some(b);
        }
        self.entries
            .get(name)
            .map(|e| e.batch)
            .filter(|b| unanswered(*b))
    }

    /// Sets `name` as forwarded message of batch `batch` would; returns the undo record.
    fn set(&mut self, name: &str, value: Option<Arc<T>>, batch: u64) -> Option<Entry<T>> {
        let before = self.entries.remove(name);
        // Settled if the previous change is answered; a change from absent to a new object is
        // unambiguous (failing leaves nothing, and using nothing fails on the server too).
        let was_present = before.as_ref().is_some_and(|e| e.value.is_some());
        let earlier_ambiguous = before
            .as_ref()
            .is_some_and(|e| e.ambiguous && e.batch == batch);
        let ambiguous = was_present || earlier_ambiguous || value.is_none();
        self.entries.insert(
            name.to_string(),
            Entry {
                value,
                batch,
                ambiguous,
            },
        );
        before
    }

    /// Marks `name` as about to change by SQL in `batch`, keeping its current value.
    fn pending_sql(&mut self, name: &str, batch: u64) {
        let value = self.entries.get(name).and_then(|e| e.value.clone());
        self.entries.insert(
            name.to_string(),
            Entry {
                value,
                batch,
                ambiguous: true,
            },
        );
    }

    fn confirm(&mut self, name: &str, value: Option<Arc<T>>, batch: u64) {
        self.entries.insert(
            name.to_string(),
            Entry {
                value,
                batch,
                ambiguous: false,
            },
        );
    }
}

#[derive(Debug, Default)]
pub(super) struct Tracker {
    pub pending: VecDeque<Pending>,
    /// The server is discarding messages until the next Sync (after an extended-protocol error).
    pub skipping: bool,
    /// Transaction status of the last ReadyForQuery.
    pub status: u8,
    statements: Namespace<Stmt>,
    portals: Namespace<Portal>,
    /// Map changes of messages in batches not yet answered, by (batch, message number).
    undo: Vec<(u64, u64, Undo)>,
    /// Batches (each ends with a Sync or is one simple Query) the frontend has forwarded, and
    /// those the server has answered (ReadyForQuery).
    pub batches_sent: u64,
    pub batches_answered: u64,
}

pub(super) struct Shared {
    tracker: Mutex<Tracker>,
    answered: tokio::sync::watch::Sender<u64>,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            tracker: Mutex::new(Tracker::default()),
            answered: tokio::sync::watch::channel(0).0,
        }
    }
}

impl Shared {
    pub(super) fn with<R>(&self, f: impl FnOnce(&mut Tracker) -> R) -> R {
        let (r, answered) = {
            let mut t = self.tracker.lock();
            let r = f(&mut t);
            (r, t.batches_answered)
        };
        self.answered.send_if_modified(|a| {
            let changed = *a != answered;
            *a = answered;
            changed
        });
        r
    }

    /// Resolves once the server has answered batch `batch`.
    pub(super) async fn answered(&self, batch: u64) {
        let mut rx = self.answered.subscribe();
        let _ = rx.wait_for(|a| *a > batch).await;
    }
}

impl Tracker {
    /// Ends the current batch (a Sync or a simple Query was forwarded).
    pub(super) fn end_batch(&mut self) {
        self.batches_sent += 1;
    }

    pub(super) fn statement(&self, name: &str) -> Lookup<Stmt> {
        self.statements
            .lookup(name, self.batches_sent, self.batches_answered)
    }

    pub(super) fn portal(&self, name: &str) -> Lookup<Portal> {
        self.portals
            .lookup(name, self.batches_sent, self.batches_answered)
    }

    /// The batch to wait for before a Parse, PREPARE, DEALLOCATE or statement Close of `name`
    /// can be forwarded (see [`Namespace::change_waits`]).
    pub(super) fn statement_change_waits(&self, name: &str) -> Option<u64> {
        self.statements
            .change_waits(name, self.batches_sent, self.batches_answered)
    }

    /// Same for a Bind, DECLARE, CLOSE or portal Close of `name`.
    pub(super) fn portal_change_waits(&self, name: &str) -> Option<u64> {
        self.portals
            .change_waits(name, self.batches_sent, self.batches_answered)
    }

    /// A Parse about to be forwarded as message `msg`: the server drops the unnamed statement
    /// first; a named one that exists makes the Parse fail. `stmt` is `None` when the gateway
    /// sends a failing Parse in its place.
    pub(super) fn parse(&mut self, name: &str, stmt: Option<Arc<Stmt>>, msg: u64) {
        let batch = self.batches_sent;
        if !name.is_empty() && self.statements.present(name) {
            return;
        }
        let before = self.statements.set(name, stmt, batch);
        self.undo
            .push((batch, msg, Undo::Statement(name.to_string(), before)));
    }

    /// A Bind about to be forwarded: like Parse, for portals.
    pub(super) fn bind(&mut self, name: &str, portal: Arc<Portal>, msg: u64) {
        let batch = self.batches_sent;
        if !name.is_empty() && self.portals.present(name) {
            return;
        }
        let before = self.portals.set(name, Some(portal), batch);
        self.undo
            .push((batch, msg, Undo::Portal(name.to_string(), before)));
    }

    /// A Close message (always succeeds on the server, also for unknown names).
    pub(super) fn close(&mut self, statement: bool, name: &str, msg: u64) {
        let batch = self.batches_sent;
        let undo = if statement {
            if !self.statements.present(name) {
                return;
            }
            Undo::Statement(name.to_string(), self.statements.set(name, None, batch))
        } else {
            if !self.portals.present(name) {
                return;
            }
            Undo::Portal(name.to_string(), self.portals.set(name, None, batch))
        };
        self.undo.push((batch, msg, undo));
    }

    /// A simple Query about to be forwarded: names its statements create or remove are unsettled
    /// until the server confirms each (see [`Tracker::confirm_sql`]).
    pub(super) fn query_objects(&mut self, statements: &Statements) {
        let batch = self.batches_sent;
        for s in statements.iter() {
            match &s.object {
                Some(SqlObject::Prepare { name }) => self.statements.pending_sql(name, batch),
                Some(SqlObject::Deallocate { name: Some(name) }) => {
                    self.statements.pending_sql(name, batch)
                }
                Some(SqlObject::Deallocate { name: None }) => {
                    self.statements.all_until = Some(batch)
                }
                Some(SqlObject::Declare { name, .. }) => self.portals.pending_sql(name, batch),
                Some(SqlObject::Close { name: Some(name) }) => {
                    self.portals.pending_sql(name, batch)
                }
                Some(SqlObject::Close { name: None }) => self.portals.all_until = Some(batch),
                Some(SqlObject::DiscardAll) => {
                    self.statements.all_until = Some(batch);
                    self.portals.all_until = Some(batch);
                }
                _ => {}
            }
        }
    }

    /// The server completed statement `object` of a simple Query (CommandComplete): applies it.
    /// `made`: the statement or portal it creates.
    pub(super) fn confirm_sql(&mut self, object: &SqlObject, made: Option<Made>) {
        let batch = self.batches_answered;
        match (object, made) {
            (SqlObject::Prepare { name }, Some(Made::Statement(s))) => {
                self.statements.confirm(name, Some(s), batch)
            }
            (SqlObject::Deallocate { name: Some(name) }, _) => {
                self.statements.confirm(name, None, batch)
            }
            (SqlObject::Deallocate { name: None }, _) => self.statements.entries.clear(),
            (SqlObject::Declare { name, .. }, Some(Made::Portal(p))) => {
                self.portals.confirm(name, Some(p), batch)
            }
            (SqlObject::Close { name: Some(name) }, _) => self.portals.confirm(name, None, batch),
            (SqlObject::Close { name: None }, _) => self.portals.entries.clear(),
            (SqlObject::DiscardAll, _) => {
                self.statements.entries.clear();
                self.portals.entries.clear();
            }
            _ => {}
        }
    }

    /// The server reported an error for pending message `p`: undoes the map changes of it and of
    /// every later message of its batch (the server skips them). Later batches never touched the
    /// same names (changes wait for earlier batches to be answered), so undoing is safe.
    pub(super) fn failed(&mut self, p: &Pending) {
        let Some(msg) = p.msg() else { return };
        let batch = self.batches_answered;
        let mut i = self.undo.len();
        while i > 0 {
            i -= 1;
            if self.undo[i].0 != batch || self.undo[i].1 < msg {
                continue;
            }
            let (_, _, undo) = self.undo.remove(i);
            match undo {
                Undo::Statement(name, before) => restore(&mut self.statements, name, before),
                Undo::Portal(name, before) => restore(&mut self.portals, name, before),
            }
        }
    }

    /// ReadyForQuery: the oldest unanswered batch is answered. Outside a transaction block,
    /// portals of answered batches are gone (but WITH HOLD cursors).
    pub(super) fn answered(&mut self, status: u8) {
        let batch = self.batches_answered;
        self.undo.retain(|(b, _, _)| *b > batch);
        self.batches_answered += 1;
        self.status = status;
        if self.statements.all_until.is_some_and(|b| b <= batch) {
            self.statements.all_until = None;
        }
        if self.portals.all_until.is_some_and(|b| b <= batch) {
            self.portals.all_until = None;
        }
        // Unconfirmed SQL effects of this batch did not happen: the old values stand, settled.
        for e in self.statements.entries.values_mut() {
            if e.batch <= batch {
                e.ambiguous = false;
            }
        }
        for e in self.portals.entries.values_mut() {
            if e.batch <= batch {
                e.ambiguous = false;
            }
        }
        if status == b'I' {
            self.portals
                .entries
                .retain(|_, e| e.batch > batch || e.value.as_ref().is_some_and(|p| p.holdable));
        }
    }
}

/// What a confirmed SQL statement created.
#[derive(Debug)]
pub enum Made {
    Statement(Arc<Stmt>),
    Portal(Arc<Portal>),
}

fn restore<T>(ns: &mut Namespace<T>, name: String, before: Option<Entry<T>>) {
    match before {
        Some(e) => {
            ns.entries.insert(name, e);
        }
        None => {
            ns.entries.remove(&name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::SqlStatement;

    fn stmt(sql: &str) -> Arc<Stmt> {
        Arc::new(Stmt::new(
            Arc::from(sql),
            Arc::new(Vec::<SqlStatement>::new()),
            None,
            false,
        ))
    }

    fn found(l: Lookup<Stmt>) -> String {
        match l {
            Lookup::Found(s) => s.sql.to_string(),
            Lookup::Absent => "absent".into(),
            Lookup::WaitFor(b) => format!("wait {b}"),
        }
    }

    #[test]
    fn a_failed_parse_leaves_the_statement_the_server_kept() {
        let mut t = Tracker::default();
        t.parse("s", Some(stmt("SELECT 1")), 1);
        t.pending.push_back(Pending::Parse {
            refusal: None,
            msg: 1,
        });
        t.end_batch();
        t.pending.push_back(Pending::Sync);
        // Answered: ParseComplete, ReadyForQuery.
        t.pending.pop_front();
        t.pending.pop_front();
        t.answered(b'I');
        assert_eq!(found(t.statement("s")), "SELECT 1");
        // A second Parse of the same name fails on the server: nothing changes.
        t.parse("s", Some(stmt("DELETE FROM t")), 2);
        assert_eq!(found(t.statement("s")), "SELECT 1");
    }

    #[test]
    fn changes_after_an_error_in_the_batch_are_undone() {
        let mut t = Tracker::default();
        t.parse("s", Some(stmt("SELECT 1")), 1);
        t.end_batch();
        t.answered(b'I');
        // Batch 1: a Bind that fails, then Close s and Parse s anew: the server skips both.
        let failing = Pending::Bind { msg: 2 };
        t.bind("p", Arc::new(Portal::new(stmt("x"), vec![], vec![])), 2);
        assert_eq!(t.statement_change_waits("s"), None, "s was answered");
        t.close(true, "s", 3);
        t.parse("s", Some(stmt("SELECT 2")), 4);
        t.end_batch();
        // Batch 2 looks s up (or changes it) before batch 1 is answered: it has to wait.
        assert_eq!(found(t.statement("s")), "wait 1");
        assert_eq!(t.statement_change_waits("s"), Some(1));
        t.failed(&failing);
        t.answered(b'I');
        assert_eq!(found(t.statement("s")), "SELECT 1");
    }

    #[test]
    fn a_new_name_is_usable_at_once_in_later_batches() {
        let mut t = Tracker::default();
        t.parse("", Some(stmt("SELECT 1")), 1);
        t.end_batch();
        // Failing would leave no statement, and using none fails on the server too.
        assert_eq!(found(t.statement("")), "SELECT 1");
    }

    #[test]
    fn portals_end_with_their_transaction_unless_held() {
        let mut t = Tracker::default();
        let p = Arc::new(Portal::new(stmt("SELECT 1"), vec![], vec![]));
        t.bind("", p, 1);
        t.end_batch();
        t.answered(b'T');
        assert!(matches!(t.portal(""), Lookup::Found(_)));
        t.end_batch();
        t.answered(b'I');
        assert!(matches!(t.portal(""), Lookup::Absent));
    }
}
